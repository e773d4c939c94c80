"""`train-lite` end to end on a tiny slice of the shared data (the two smallest datasets: 4 train items,
20 val): cache, fit, gate, export, card, resume."""

from __future__ import annotations

import pytest

from segmenter.lite.backend import load_model


@pytest.mark.slow
def test_train_lite_tiny_run_writes_loadable_weights_and_resumes(data_root, tmp_path, capsys):
    from agent.cli import main

    args = [
        "train-lite", "--data", str(data_root), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
        "--datasets", "drishti_gs1,covid_cxr_lungs", "--max-per-dataset", "2", "--epochs", "1", "--batch-size", "4",
    ]
    assert main(args) == 0
    out = tmp_path / "out"
    weights = out / "medsam3_lite.safetensors"
    net = load_model(weights)  # the exported file fits the model exactly
    assert net.presence_gate is not None
    card = (out / "MODEL_CARD.md").read_text()
    assert "train-lite" in card and "| optic disc |" in card and "Presence" in card
    assert len(list((tmp_path / "cache" / "train").rglob("*.npz"))) == 4
    capsys.readouterr()

    # a second run finds the cache and the finished train state: nothing is encoded or fitted again
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "resumed at step" in log
