"""No DICOM tag other than geometry and modality leaves the loader (issue 10 item 5).

A DICOM with its patient and study tags set (name, ID, birth date, accession number, institution,
description) is answered by the real Agent with an MLLM planner on the fake OpenAI server on 127.0.0.1:
one file (the 2D way: the image and the question go to the model) and a zip of a series (the volume way:
a montage of slices). None of the tags' values is in any request the model received, in result.json
(answer, measurements, trace), in the log records or in what was printed. Only the DICOM SEG written for
a series carries them: the standard requires the source's patient module there (docs/security.md).

Where the tags go in the code: ``segmenter.dicom_series`` keeps the headers (pixel data removed) in
``Study.dicom_headers``, which only ``segmenter.export.save_dicom_seg`` reads; ``Geometry`` holds spacing,
affine and modality, and nothing else of a header reaches the agent.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from agent_helpers import FakeOpenAI, openai_agent, text_reply, tool_reply
from ui_helpers import ct_series_zip

TAGS = {
    "PatientName": "Marker^Janet", "PatientID": "PID-8675309", "PatientBirthDate": "19610704",
    "AccessionNumber": "ACC5550199", "InstitutionName": "Markerton General", "StudyDescription": "MARKERSTUDY",
    "ReferringPhysicianName": "Referrer^Markus", "OtherPatientIDs": "OPID4242",
}
# every value, and the parts a formatter might split a person name into
NEEDLES = ["Marker", "Janet", "8675309", "19610704", "1961-07-04", "5550199", "Markerton", "MARKERSTUDY",
           "Markus", "OPID4242"]


def _leaks(text: str) -> list[str]:
    return [needle for needle in NEEDLES if needle.lower() in text.lower()]


def _tagged_file(path: Path) -> Path:
    ds = copy.deepcopy(pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")))
    for key, value in TAGS.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _everything_written(out: Path) -> str:
    """result.json and every other text-like file of a saved result (the SEG is checked apart)."""
    return "\n".join(p.read_text(errors="replace") for p in out.rglob("*.json"))


@pytest.fixture()
def watched(caplog, capsys):
    caplog.set_level(logging.DEBUG)

    def said() -> str:
        printed = capsys.readouterr()
        return "\n".join([r.getMessage() for r in caplog.records] + [printed.out, printed.err])

    return said


def test_one_dicom_file_tags_reach_neither_the_mllm_nor_result_json_nor_the_logs(tmp_path, segmenter, watched):
    source = _tagged_file(tmp_path / "scan.dcm")
    def model(body: dict) -> dict:
        """Segment 'kidney', then select the first mask (or report none); a per-mask check request accepts."""
        if "mask #" in json.dumps(body["messages"][0]):
            return text_reply("accept")
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        if not results:
            return tool_reply("segment_concept", {"concept": "kidney"}, call_id="call_a")
        if "nothing found" in str(results[-1]):
            return tool_reply("report_no_mask", {"answer": "Nothing found."}, call_id="call_b")
        return tool_reply("select_masks", {"ids": [1], "answer": "One structure outlined."}, call_id="call_b")

    with FakeOpenAI([model] * 8) as fake:
        result = openai_agent(fake, segmenter).run("how large is the kidney?", image=source)
    assert fake.requests and fake.images(0)[0].shape[:2] == (128, 128)  # the model saw the pixels
    assert _leaks(json.dumps([r["body"] for r in fake.requests])) == []
    out = result.save(tmp_path / "out")
    assert result.status == "done"
    assert _leaks(_everything_written(out)) == [] and _leaks(repr(result)) == []
    assert _leaks(watched()) == []


def test_a_series_zip_tags_stay_out_of_the_montage_request_and_result_json_and_only_the_seg_has_them(
        tmp_path, segmenter, watched):
    source = ct_series_zip(tmp_path / "series.zip", slices=2, **TAGS)
    with FakeOpenAI([text_reply('{"concepts": ["kidney"]}')]) as fake:
        result = openai_agent(fake, segmenter).run("how large is the kidney?", image=source)
    assert len(fake.requests) == 1 and fake.images(0)  # the montage of labelled slices: pixels only
    assert _leaks(json.dumps([r["body"] for r in fake.requests])) == []
    assert result.volume is not None and _leaks(json.dumps([e.summary() for e in result.trace])) == []
    out = result.save(tmp_path / "out")
    assert _leaks(_everything_written(out)) == [] and _leaks(repr(result)) == []
    assert _leaks(watched()) == []
    seg = pydicom.dcmread(out / "segmentation.dcm")  # written for DICOM input: the source's patient module
    assert str(seg.PatientName) == TAGS["PatientName"] and seg.PatientID == TAGS["PatientID"]
