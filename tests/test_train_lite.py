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
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "train-lite" in card and "| optic disc |" in card and "Presence" in card
    assert len(list((tmp_path / "cache" / "train").rglob("*.npz"))) == 4
    capsys.readouterr()

    # a second run finds the cache and the finished train state: nothing is encoded or fitted again
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "resumed at step" in log


def _drawn_dataset(root):
    """One drawn 64x64 'x-ray' with a lung mask, an organ the manifest calls absent, and concepts the catalog lacks."""
    import json

    import numpy as np
    from PIL import Image

    ds = root / "drawn"
    for sub in ("images", "masks/lung", "masks/esophagus"):
        (ds / sub).mkdir(parents=True)
    image = np.zeros((64, 64), np.uint8)
    image[16:48, 8:28] = 200
    Image.fromarray(image).save(ds / "images/a.png")
    Image.fromarray(np.where(image > 0, 255, 0).astype(np.uint8)).save(ds / "masks/lung/a.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ds / "masks/esophagus/a.png")
    row = {"id": "a", "image": "images/a.png", "split": "train", "width": 64, "height": 64,
           "masks": {"lung": "masks/lung/a.png", "esophagus": "masks/esophagus/a.png"},
           "absent_concepts": ["cardiomediastinum", "urinary bladder"]}
    (ds / "manifest.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return "drawn"


def test_manifest_absent_concepts_are_negatives_unknown_concepts_skipped_eval_only_refused(tmp_path):
    from segmenter.lite.dataset import manifest_items

    (item,) = manifest_items(tmp_path, "train", [_drawn_dataset(tmp_path)], None)
    assert item.masks == {"lung": tmp_path / "drawn/masks/lung/a.png", "cardiomediastinum": None}
    with pytest.raises(ValueError, match="evaluation only"):
        manifest_items(tmp_path, "train", ["ircadb_ct"], None)  # CC BY-NC-ND: never trained on, even if present


@pytest.mark.slow
def test_init_from_starts_from_the_given_weights_and_caches_absent_organs_as_empty_masks(tmp_path):
    import torch
    from safetensors.torch import load_file

    from segmenter.lite.backend import default_weights_path
    from segmenter.lite.dataset import build_cache, load_cache, manifest_items
    from segmenter.lite.train import TrainConfig, _initial_model

    cfg = TrainConfig(data=tmp_path, out=tmp_path, cache=tmp_path / "cache", datasets=[],
                      init_from=default_weights_path())
    net = _initial_model(cfg)
    shipped = load_file(str(default_weights_path()))
    assert all(torch.equal(net.trainable_state_dict()[k], v.float()) for k, v in shipped.items())
    items = manifest_items(tmp_path, "train", [_drawn_dataset(tmp_path)], None)
    assert build_cache(net, items, cfg.cache, progress=False) == 1
    (sample,) = load_cache(cfg.cache, items)
    assert sample.masks["lung"].any() and not sample.masks["cardiomediastinum"].any()


def test_a_run_stopped_and_resumed_trains_as_one_that_was_not_stopped(tmp_path):
    """The resumed steps use the configured learning rates on the schedule, not the rates the saved optimizer
    last held (which the schedule had already scaled down: a resumed epoch trained at almost zero)."""
    import copy

    import numpy as np

    from segmenter.lite.dataset import CachedSample
    from segmenter.lite.train import TrainConfig, fit

    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        mask = np.zeros((256, 256), np.uint8)
        mask[40 + 10 * i : 120, 60:150] = 1
        samples.append(CachedSample(dataset="drawn", key=f"drawn/{i}", masks={"lung": mask}, new_size=(256, 256),
                                    embedding=rng.normal(0, 1, (256, 64, 64)).astype(np.float16)))
    base = load_model()

    def run(out, **overrides):
        cfg = TrainConfig(data=tmp_path, out=out, cache=tmp_path / "cache", datasets=["drawn"], batch_size=2,
                          min_positives_per_dataset=4, negative_ratio=0.25, box_prompt_prob=0.0, lr=0.05,
                          head_lr=0.5, **overrides)  # large rates: the few warm-up steps move the weights
        net = copy.deepcopy(base)
        return fit(cfg, net, samples, log=lambda m: None), net

    whole, straight = run(tmp_path / "straight", epochs=1)
    stopped, _ = run(tmp_path / "resumed", epochs=1, max_minutes=0)  # stops after its first step
    resumed_progress, resumed = run(tmp_path / "resumed", epochs=1)
    assert not stopped["finished"] and stopped["steps"] == 1 and resumed_progress["finished"]
    assert whole["steps"] == resumed_progress["steps"] >= 3
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    moved = max(float((a[k] - base.trainable_state_dict()[k]).abs().max()) for k in a)
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-3 and gap < 0.05 * moved, (moved, gap)
