"""The chat UI with clinical inputs (issue 10 item 6): a NIfTI volume, a zip of one DICOM series and a single
DICOM file, uploaded through the real UI on 127.0.0.1 and asked about.

A volume answer shows the slice slider (its range is the volume's slices), an overlay per slice with the
masks, the measurements in the chat, and the NIfTI (and, for DICOM, the SEG) in masks.zip. The volumes are
a few slices of the repo's CC BY chest X-ray (examples/) or pydicom's CT_small.dcm, so each run encodes
one or two distinct slices; the UI shares the test session's segmenter.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from ui_helpers import AFFINE, ASK_SETTINGS, ask, chest_nifti, client, ct_series_zip, free_port, last_turn, texts

pytest.importorskip("gradio_client")

SIZE = 160


@pytest.fixture(scope="module")
def served(tmp_path_factory, segmenter):
    """The real UI (offline planner), its agents on the session's segmenter (no second model load)."""
    from agent.ui.app import UiConfig, launch_app
    from agent.ui.runner import AgentPool

    work = tmp_path_factory.mktemp("ui_volumes")
    pool = AgentPool(work / "threads.sqlite", segmenters={"lite": segmenter})
    ui = launch_app(UiConfig(port=free_port(), workdir=work), pool, block=False)
    yield ui
    ui.close()


def _coloured(path: str) -> int:
    """Pixels with a hue (mask tints, outlines, the label): a greyscale slice has none."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 30).sum())


@pytest.fixture(scope="module")
def nifti_answer(served, tmp_path_factory):
    """One question on an uploaded NIfTI volume: the client (its session holds the answer) and the outputs."""
    ui_client = client(served.url)
    volume = chest_nifti(tmp_path_factory.mktemp("nifti") / "chest.nii.gz", SIZE)
    return ui_client, ask(ui_client, "outline the lungs and give their volume", volume)


def test_a_nifti_volume_answer_shows_its_measurements_and_a_slider_with_the_masks_on_each_slice(nifti_answer):
    ui_client, out = nifti_answer
    turn = last_turn(out["chat"])
    said = "\n".join(texts(m) for m in turn)
    assert out["status"].startswith("Done") and "key slice" in out["status"], said
    assert "a volume of 4 slices of 160 x 160" in said and "0.90 x 0.90 x 3.00 mm" in said
    measurements = next(texts(m) for m in turn if texts(m).startswith("**Measurements**"))
    assert "lung volume" in measurements and " mL " in measurements and " mm " in measurements, measurements

    slider = out["slider"]  # the update that shows the slider over the volume's slices
    assert slider["visible"] is True and (slider["minimum"], slider["maximum"]) == (0, 3)
    key = slider["value"]
    assert key in (1, 2)  # the lungs are on the X-ray slices only
    shown = ui_client.predict(key, api_name="/show_slice")
    blank = ui_client.predict(0, api_name="/show_slice")
    assert Image.open(shown).size == Image.open(blank).size == (SIZE, SIZE)
    assert _coloured(shown) > _coloured(blank) + 500  # the masks are drawn on the lung slice, not on the blank one


def test_a_nifti_volume_answer_downloads_its_nifti_masks_at_the_source_affine(served, nifti_answer):
    zip_path, json_path = nifti_answer[1]["downloads"]
    saved = json.loads(Path(json_path).read_text(encoding="utf-8"))
    nifti = saved["volume"]["concepts"][0]["nifti"]
    with zipfile.ZipFile(zip_path) as archive:
        assert nifti in archive.namelist() and "segmentation.dcm" not in archive.namelist()  # SEG: DICOM input only
        written = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(nifti)))
    assert np.allclose(written.affine, AFFINE) and written.shape == (SIZE, SIZE, 4)
    per_slice = (np.asarray(written.dataobj) > 0).sum(axis=(0, 1))
    assert per_slice[0] == per_slice[3] == 0 and per_slice[1] > 0

    # everything the turn wrote is inside the run's folder, which goes on clear/exit
    root = served.app.files.root
    assert list((root / "sessions").rglob("masks.zip")) and list((root / "gradio").rglob("*.png"))


def test_a_dicom_series_zip_gets_its_seg_and_no_patient_tag_in_the_chat(served, tmp_path):
    ui_client = client(served.url)
    series = ct_series_zip(tmp_path / "ct_series.zip", slices=3, PatientName="Marker^Jane", PatientID="PID-8675309")
    out = ask(ui_client, "how large is the kidney?", series)
    said = "\n".join(texts(m) for m in last_turn(out["chat"]))
    assert out["status"].startswith("Done"), said
    shown = json.dumps(out["chat"]) + Path(out["downloads"][1]).read_text(encoding="utf-8")
    assert "Marker" not in shown and "8675309" not in shown  # no patient tag in the chat or result.json
    assert "a CT volume of 3 slices of 128 x 128" in said and "0.66 x 0.66 x 5.00 mm" in said
    assert out["slider"]["maximum"] == 2
    # the panel's default window ("auto"): CT_small has none of its own, so the abdomen preset, named in both
    assert "shown through the abdomen window (level 40, width 400)" in said
    assert "the abdomen window (level 40, width 400)" in out["slider"]["label"]
    saved = json.loads(Path(out["downloads"][1]).read_text(encoding="utf-8"))
    assert saved["volume"]["shape"] == [3, 128, 128] and saved["volume"]["seg"] == "segmentation.dcm"
    with zipfile.ZipFile(out["downloads"][0]) as archive:
        names = set(archive.namelist())
        assert "segmentation.dcm" in names and all(c["nifti"] in names for c in saved["volume"]["concepts"])
        seg = pydicom.dcmread(io.BytesIO(archive.read("segmentation.dcm")))
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID  # references the series
    assert seg.PatientID == "PID-8675309"  # the SEG carries the source's patient module, as the standard requires


def test_a_single_dicom_file_goes_the_2d_way_with_its_pixel_spacing(served):
    """One DICOM file is one slice: the 2D way, no slider, sizes in millimetres from its pixel spacing."""
    single = ask(client(served.url), "how large is the kidney?", Path(pydicom.data.get_testdata_file("CT_small.dcm")))
    said = "\n".join(texts(m) for m in last_turn(single["chat"]))
    assert single["status"].startswith("Done") and "volume of" not in said, said
    assert single["slider"]["visible"] is False
    one = json.loads(Path(single["downloads"][1]).read_text(encoding="utf-8"))
    assert one["image_size"] == [128, 128] and one["volume"] is None
    sizes = [m for m in one["measurements"] if m["kind"] != "count"]
    assert all(m["unit"].startswith("mm") for m in sizes)  # spacing known: never pixels
    if sizes:  # what was measured is listed in the chat with its units
        assert "**Measurements**" in said and "mm²" in said


def test_unreadable_volumes_and_the_voxel_budget_are_chat_messages_naming_the_upload(tmp_path):
    """The handler itself (no model is loaded: nothing gets as far as the agent)."""
    from agent.ui.app import ChatApp, UiConfig
    from agent.ui.retention import RunFiles

    files = RunFiles(tmp_path)
    try:
        app = ChatApp(UiConfig(workdir=tmp_path, max_voxels=3 * 128 * 128 - 1), files=files)
        uploads = files.gradio_cache / "upload"
        uploads.mkdir()
        with zipfile.ZipFile(uploads / "mixed.zip", "w") as archive:
            archive.writestr("series/notes.txt", "not a slice")
        (uploads / "scan.nii.gz").write_bytes(gzip.compress(b"\0" * 400))
        series = ct_series_zip(uploads / "series.zip", slices=3)  # one voxel over the budget

        def said(name: str) -> str:
            *_, last = app.ask({"text": "find the liver", "files": [str(uploads / name)]}, None, *ASK_SETTINGS)
            return texts(last[0][-1])

        assert "notes.txt: not a DICOM file" in said("mixed.zip")
        assert "scan.nii.gz: not a readable NIfTI file" in said("scan.nii.gz")
        too_big = said(series.name)
        assert too_big.startswith("**Error:**") and "3 slices of 128x128" in too_big, too_big
        for message in (said("mixed.zip"), too_big):
            assert str(uploads) not in message  # the upload is named as the user knows it
    finally:
        files.remove()


class _Recorder:
    """A pool that keeps the study each turn hands to the agent (the pixels the segmenter gets) and runs nothing."""

    def __init__(self) -> None:
        self.studies: list = []

    def stream(self, settings, question, image, thread_id):
        self.studies.append(image)
        return iter(())

    def forget(self, thread_id, wait=120.0):
        return True


def test_the_window_setting_decides_the_pixels_the_segmenter_gets_from_a_ct_upload(tmp_path):
    """The panel's window: "auto" reads the upload as before (the file's own window, else abdomen), a preset or
    "level,width" re-windows the CT values the agent segments, a bad value is a chat message naming it."""
    from agent.ui.app import ChatApp, UiConfig
    from agent.ui.retention import RunFiles
    from segmenter.study_io import load_study
    from segmenter.windows import apply_window, preset

    files = RunFiles(tmp_path)
    try:
        pool = _Recorder()
        app = ChatApp(UiConfig(workdir=tmp_path), pool=pool, files=files)  # type: ignore[arg-type]
        uploads = files.gradio_cache / "upload"
        uploads.mkdir()
        series = ct_series_zip(uploads / "series.zip", slices=2)  # CT_small: no window of its own
        own = ct_series_zip(uploads / "own.zip", slices=2, WindowCenter="-500", WindowWidth="1000")

        def said(chat: list) -> str:
            return " ".join(texts(m) for m in chat if m["role"] == "assistant")

        def turn(name: str, window: str, session=None) -> tuple[list, object]:
            message = {"text": "find the lungs", "files": [str(uploads / name)] if name else []}
            *_, last = app.ask(message, session, *ASK_SETTINGS[:-1], window)
            return last[0], last[5]

        chat, _ = turn(series.name, "auto")
        default = pool.studies[-1]
        today = load_study(series)  # the loader's own rule, as before the setting existed
        assert default.window.name == "abdomen" and (default.slices == today.slices).all()
        assert "the abdomen window (level 40, width 400)" in said(chat)
        turn(own.name, "auto")
        assert pool.studies[-1].window.name == "dicom" and pool.studies[-1].window.center == -500  # the file's own

        lung = apply_window(today.values, preset("lung"))
        for spec in ("lung", "-600,1500", " Lungs "):
            chat, _ = turn(series.name, spec)
            study = pool.studies[-1]
            assert (study.slices[..., 0] == lung).all() and not (study.slices == default.slices).all(), spec
            assert (study.values == today.values).all()  # only the display changes, not the HU
        assert "the lung window (level -600, width 1500)" in said(chat)
        turn(series.name, "-600,1500")
        assert pool.studies[-1].window.name == "custom"

        # a changed window applies to the next upload; a follow-up on the same image says so
        chat, session = turn(series.name, "auto")
        chat, session = turn("", "lung", session)
        said = " ".join(texts(m) for m in chat[-2:])
        assert "window setting (lung) applies when a file is read" in said
        assert (pool.studies[-1].slices == default.slices).all()

        studies = len(pool.studies)
        for bad, named in (("lungz", "'lungz'"), ("40,0", "width 0.0"), ("-600;1500", "'-600;1500'")):
            chat, session = turn(series.name, bad)
            message = texts(chat[-1])
            assert message.startswith("**Error:**") and "window" in message and named in message, message
            assert "Traceback" not in message and "attach it again" in message
            assert chat[-2] == {"role": "user", "content": ["find the lungs"]}  # the question stays in the chat
            assert session.study is None  # nothing was read
        assert len(pool.studies) == studies  # nor run
    finally:
        files.remove()
