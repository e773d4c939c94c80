"""The offline planner's concept picking (catalog + MiniLM + the image's modality) and the dev question set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import val_rows

from agent.cli import main as cli_main
from agent.concepts import ConceptPicker, default_picker, text_modalities
from agent.modality import guess_modality
from evals.runner import default_questions
from segmenter.study_io import load_image


@pytest.fixture(scope="module")
def picker() -> ConceptPicker:
    return default_picker()


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Segment the polyp.", ["polyp"]),
        ("Where is the adenoma?", ["polyp"]),
        ("Outline the optic disc and the cup.", ["optic disc", "optic cup"]),
        ("What is the cup-to-disc ratio here?", ["optic cup", "optic disc"]),
        ("Segment the left and right lungs.", ["left lung", "right lung"]),
        ("Where is the heart?", ["cardiomediastinum"]),
        ("Show me the mole on my arm", ["skin lesion"]),
        ("Count the nuclei", ["cell nucleus"]),
        ("Find the tumor in this brain MRI", ["brain tumor"]),  # the question's own modality word decides
        ("Is there a lump on this breast ultrasound?", ["breast tumor"]),
    ],
)
def test_picks_from_the_question_alone(picker, question, expected):
    assert sorted(picker.pick(question).concepts) == sorted(expected)


def test_negated_concepts_are_excluded(picker):
    pick = picker.pick("Show the optic disc but not the cup.")
    assert pick.concepts == ["optic disc"] and pick.excluded == ["optic cup"]


def test_meaning_is_used_when_no_catalog_word_appears(picker):
    pick = picker.pick("Where does the optic nerve leave the eye?")
    assert pick.concepts == ["optic disc"] and pick.how["optic disc"].startswith("closest in meaning")


def test_modality_words():
    assert text_modalities("a colonoscopy frame") == ["endoscopy"]
    assert text_modalities("chest x-ray") == ["x-ray"]


@pytest.mark.parametrize(
    ("dataset", "concept"),
    [("isic2017", "skin lesion"), ("busi", "breast tumor"), ("brain_mri", "brain tumor"), ("kvasir_seg", "polyp")],
)
def test_ambiguous_lesion_is_resolved_from_the_image(picker, dataset, concept):
    row = val_rows(dataset, limit=1)[0]
    pick = picker.pick("Segment the lesion.", load_image(row["image"]))
    assert pick.concepts == [concept]
    assert pick.ambiguous and "image looks like" in pick.how[concept]


@pytest.mark.parametrize("dataset", ["kvasir_seg", "isic2017", "busi", "drishti_gs1", "covid_cxr_lungs", "monuseg",
                                     "brain_mri"])
def test_modality_guess_on_val_images(dataset):
    for row in val_rows(dataset, limit=3):
        guess = guess_modality(load_image(row["image"]))
        assert guess.modality == row["modality"], (row["id"], guess)
        assert abs(sum(guess.probabilities.values()) - 1) < 1e-3


DEV_SET = default_questions()


def test_dev_set_format():
    rows = [json.loads(line) for line in DEV_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 100
    assert len({r["id"] for r in rows}) == len(rows)
    categories = {r["category"] for r in rows}
    assert {"direct", "synonym", "lay", "implicit", "multi", "negative", "ambiguous"} <= categories
    names = set(default_picker().catalog.names)
    for row in rows:
        assert set(row) >= {"id", "image", "question", "masks", "concepts"}
        assert not Path(row["image"]).is_absolute() and set(row["concepts"]) <= names
        assert set(row["masks"]) <= set(row["concepts"])  # {} = nothing there
    assert sum(1 for r in rows if r["masks"] == {}) >= 10


def test_offline_concept_pick_accuracy_on_the_dev_set(data_root, tmp_path, capsys):
    """Through the CLI a developer uses: ``medsam3-agent eval --mode pick`` on the shipped dev set."""
    assert cli_main(["eval", "--mode", "pick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "pick.json").read_text(encoding="utf-8"))
    accuracy = report["correct"] / report["total"]
    assert f"concept-pick accuracy: {accuracy:.1%}" in capsys.readouterr().out
    assert report["total"] >= 100
    assert accuracy >= 0.95, report["misses"]


def test_pick_mode_runs_alone(tmp_path, capsys):
    assert cli_main(["eval", "--mode", "pick,direct", "--out", str(tmp_path)]) == 2
    assert "--mode pick runs alone" in capsys.readouterr().err
