"""Experts (catalog ``expert``): a concept is segmented by the trained parts in the folder of that name beside the
main weights, which share the main network's frozen LiteMedSAM parts; without that folder the main weights serve."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from segmenter.lite.backend import WEIGHTS_FILE, LiteBackend, default_weights_path
from segmenter.lite.thresholds import ConceptThreshold, write_thresholds
from segmenter.types import Prompt

GATE_BIAS = "presence_gate.head.4.bias"  # the presence gate's last layer


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Main weights (the shipped ones) and an "abdomen" expert whose presence gate says no to everything."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("weights")
    main = folder / WEIGHTS_FILE
    shutil.copyfile(default_weights_path(), main)
    state = load_file(str(main))
    assert GATE_BIAS in state
    state[GATE_BIAS] = torch.full_like(state[GATE_BIAS], -40.0)
    (folder / "abdomen").mkdir()
    save_file(state, str(folder / "abdomen" / WEIGHTS_FILE))
    return main


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 60, (128, 128), dtype=np.uint8)
    grey[30:90, 20:80] += 120  # a bright organ-like blob
    return np.repeat(grey[..., None], 3, axis=2)


def test_a_concept_with_an_expert_is_gated_and_drawn_by_the_expert_and_others_by_the_main_weights(weights):
    backend = LiteBackend(weights=weights, encoder="torch")
    catalog = backend.catalog
    assert catalog.get("spleen").expert == "abdomen" and catalog.get("polyp").expert is None
    backend.set_image(_image())
    spleen, polyp = backend.segment(Prompt(concept="splenic")), backend.segment(Prompt(concept="polyp"))
    assert spleen.presence < 1e-9 and spleen.instances == []  # the expert's gate, not the main one's
    assert backend.info()["experts"] == ["abdomen"]
    expert_net = backend._net("abdomen")
    # the expert shares the frozen parts (one encoder in memory), its concept parts are its own
    assert expert_net.image_encoder is backend.net.image_encoder and expert_net.mask_decoder is backend.net.mask_decoder
    assert expert_net.presence_gate is not backend.net.presence_gate
    (weights.parent / "abdomen" / WEIGHTS_FILE).rename(weights.parent / "moved.safetensors")
    try:  # no expert folder: the main weights serve the concept, and the same image says otherwise
        plain = LiteBackend(weights=weights, encoder="torch")
        plain.set_image(_image())
        assert plain.info()["experts"] == []
        assert plain.segment(Prompt(concept="splenic")).presence > 1e-6
        assert plain.segment(Prompt(concept="polyp")).presence == pytest.approx(polyp.presence, abs=1e-6)
    finally:
        (weights.parent / "moved.safetensors").rename(weights.parent / "abdomen" / WEIGHTS_FILE)


def test_an_expert_concept_is_gated_at_the_threshold_calibrated_for_the_expert_weights(weights):
    expert = weights.parent / "abdomen" / WEIGHTS_FILE
    calibrated = ConceptThreshold(threshold=0.8, calibrated=True, sensitivity=1.0, specificity=1.0, n_positive=12,
                                  n_negative=4, specificity_other_modality=1.0, n_other_modality=3,
                                  sensitivity_at_default=1.0, specificity_at_default=0.5)
    path = write_thresholds(expert, {"spleen": calibrated}, 0.97, "drawn")
    try:
        backend = LiteBackend(weights=weights, encoder="torch")
        assert backend.gate("spleen") == backend.gate("splenic") == 0.8
        assert backend.gate("polyp") == backend.concept_thresholds.get("polyp", 0.5)  # the main file's
    finally:
        path.unlink()


def test_a_study_of_a_known_modality_is_segmented_by_that_modalitys_expert(weights):
    """Catalog ``modality_experts`` ({"CT": "abdomen_ct"}): a prompt whose image says CT (``Prompt.modality``, which
    the Segmenter fills from the geometry) goes to that expert; MR, unknown or a missing folder: the concept's own."""
    from safetensors.torch import load_file, save_file

    from segmenter import Segmenter
    from segmenter.study import Geometry

    state = load_file(str(weights))
    state[GATE_BIAS] = torch.full_like(state[GATE_BIAS], 40.0)  # this one says yes to everything
    (weights.parent / "abdomen_ct").mkdir()
    save_file(state, str(weights.parent / "abdomen_ct" / WEIGHTS_FILE))
    try:
        backend = LiteBackend(weights=weights, encoder="torch")
        assert backend.catalog.get("spleen").modality_experts == {"CT": "abdomen_ct"}
        assert backend.info()["experts"] == ["abdomen", "abdomen_ct"]
        backend.set_image(_image())
        for modality in ("CT", "ct", " Ct "):
            assert backend.segment(Prompt(concept="splenic", modality=modality)).presence > 0.999
        for modality in (None, "MR", "US"):
            assert backend.segment(Prompt(concept="splenic", modality=modality)).presence < 1e-9  # "abdomen"
        polyp = backend.segment(Prompt(concept="polyp")).presence  # no CT expert: the main weights either way
        assert backend.segment(Prompt(concept="polyp", modality="CT")).presence == pytest.approx(polyp, abs=1e-6)
        seg = Segmenter(backend)
        for concept in ("spleen", "left kidney"):  # a lateral concept's base is asked with the same modality
            on_ct = seg.segment(_image(), concept, geometry=Geometry(modality="CT"))
            assert on_ct.prompt.modality == "CT" and on_ct.presence > 0.999
            assert seg.segment(_image(), concept, geometry=Geometry()).presence < 1e-9
        shutil.rmtree(weights.parent / "abdomen_ct")
        plain = LiteBackend(weights=weights, encoder="torch")
        plain.set_image(_image())
        assert plain.segment(Prompt(concept="splenic", modality="CT")).presence < 1e-9  # its own expert serves
    finally:
        shutil.rmtree(weights.parent / "abdomen_ct", ignore_errors=True)


def test_a_lateral_concept_takes_its_bases_modality_experts():
    from conftest import catalog_with

    from segmenter.catalog import ConceptCatalog

    with pytest.raises(ValueError, match="a lateral concept uses its base's experts"):
        ConceptCatalog.model_validate(catalog_with(**{"left kidney": {"modality_experts": {"CT": "elsewhere"}}}))
    same = catalog_with(**{"left kidney": {"modality_experts": {"ct": "abdomen_ct"}}})  # the tag's case: no matter
    assert ConceptCatalog.model_validate(same).get("left kidney").expert_for("CT") == "abdomen_ct"
