"""Per-concept presence thresholds (segmenter/lite/calibrate.py): the choice for a recall, the shipped gate's
scores on cached embeddings, the file tied to its weights, the command, and the Lite backend using them."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from segmenter.lite.calibrate import calibrate_presence, choose_threshold
from segmenter.lite.dataset import CachedSample
from segmenter.lite.thresholds import THRESHOLDS_FILE, load_thresholds, write_thresholds


def test_threshold_rejects_the_most_negatives_the_recall_allows_and_keeps_every_positive_it_can():
    positives = [0.95] * 33 + [0.7]  # 34 positives: 0.97 of them is 33 (32.98 rounded up)
    # a same-modality negative at 0.8: rejecting it costs one positive, which the recall allows
    assert choose_threshold(positives, [0.8, 0.1, 0.99], 0.97) == pytest.approx((0.8 + 0.95) / 2)
    # every positive kept: nothing above 0.7 can be rejected, and the default 0.5 is as good as any
    assert choose_threshold(positives, [0.8, 0.1, 0.99], 1.0) == 0.5
    # no negative between the default and the highest allowed threshold: the default, no positive given up
    assert choose_threshold(positives, [0.1, 0.99], 0.97) == 0.5
    # negatives above the default but below every positive: halfway between the highest and the lowest positive
    assert choose_threshold(positives, [0.6, 0.3], 0.97) == pytest.approx((0.6 + 0.7) / 2)
    # positives below the default with no negative under them: halfway down to 0
    assert choose_threshold([0.4] * 10, [0.9], 1.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold([], [0.5], 0.97)


@pytest.fixture(scope="module")
def net():
    from segmenter.lite.backend import load_model

    return load_model()


def _sample(dataset: str, key: str, rng: np.random.Generator, **present: bool) -> CachedSample:
    masks = {c: np.pad(np.ones((8, 8), np.uint8), ((0, 248), (0, 248))) * int(on) for c, on in present.items()}
    embedding = rng.normal(0, 1, (256, 64, 64)).astype(np.float16)
    return CachedSample(dataset=dataset, key=key, embedding=embedding, masks=masks, new_size=(256, 256))


def test_calibration_on_the_shipped_gate_reaches_the_recall_and_reports_what_it_achieves(net):
    from segmenter.text import shared_embedder

    rng = np.random.default_rng(0)
    tumor = "breast tumor"
    samples = [_sample("busi", f"busi/b{i}", rng, **{tumor: i < 12}) for i in range(16)]  # 12 with, 4 without
    samples += [_sample("kvasir_seg", f"kvasir_seg/k{i}", rng, polyp=True) for i in range(3)]
    samples += [_sample("monuseg", f"monuseg/m_t{y}_0", rng, **{"cell nucleus": y == 0}) for y in (0, 256)]
    samples += [_sample("amos_ct", "amos_ct/c", rng, stomach=True)]  # a concept the catalog lacks: ignored
    result = calibrate_presence(net, samples, 0.97, min_positives=10)

    assert set(result) == {tumor, "polyp", "cell nucleus"}  # concepts with a labelled image
    t = result[tumor]
    assert t.calibrated and (t.n_positive, t.n_negative) == (12, 4) and t.n_other_modality == 3 + 1
    # the gate's own probabilities (MedSAM3Lite.presence), one image at a time, give the reported figures
    text = torch.from_numpy(shared_embedder().embed([tumor])).float()
    with torch.no_grad():
        p = [float(net.presence(torch.from_numpy(s.embedding[None]).float(), text)[0]) for s in samples[:16]]
    assert t.sensitivity == np.mean([x >= t.threshold for x in p[:12]]) >= 0.97
    assert t.specificity == np.mean([x < t.threshold for x in p[12:]])
    assert t.sensitivity_at_default == np.mean([x >= 0.5 for x in p[:12]])
    assert not any(s < t.threshold for s in p[:12])  # 0.97 of 12 is all 12
    # too few positives: the default is kept; an image's two tiles are one positive image
    assert not result["polyp"].calibrated and result["polyp"].threshold == 0.5
    assert (result["cell nucleus"].n_positive, result["cell nucleus"].n_negative) == (1, 0)


def test_thresholds_file_belongs_to_its_weights_and_is_ignored_with_a_warning_otherwise(net, tmp_path):
    from segmenter.lite.backend import default_weights_path

    weights = tmp_path / "w.safetensors"
    shutil.copyfile(default_weights_path(), weights)
    rng = np.random.default_rng(1)
    samples = [_sample("busi", f"busi/b{i}", rng, **{"breast tumor": i < 10}) for i in range(12)]
    path = write_thresholds(weights, calibrate_presence(net, samples), 0.97, "drawn")
    assert path == tmp_path / THRESHOLDS_FILE
    stored = json.loads(path.read_text(encoding="utf-8"))["concepts"]["breast tumor"]["threshold"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_thresholds(weights) == {"breast tumor": stored}  # only calibrated concepts
    with weights.open("ab") as handle:  # other weights now
        handle.write(b"\0")
    with pytest.warns(UserWarning, match="calibrated for other weights"):
        assert load_thresholds(weights) == {}
    path.write_text("{not json", encoding="utf-8")
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_thresholds(weights) == {}
    assert load_thresholds(tmp_path / "elsewhere" / "w.safetensors") == {}  # no file: no warning, no thresholds


def test_calibrate_presence_command_reads_a_val_cache_and_writes_beside_the_weights(tmp_path, capsys):
    from agent.cli import main
    from segmenter.lite.backend import default_weights_path

    data, cache = tmp_path / "data", tmp_path / "cache"
    rows = []
    rng = np.random.default_rng(2)
    for i in range(12):  # a drawn breast-ultrasound set: 10 with a tumour, 2 normal; cached as train-lite caches
        rows.append({"id": f"b{i}", "image": f"images/b{i}.png", "split": "val", "width": 64, "height": 64,
                     "masks": {"breast tumor": f"masks/b{i}.png"}})
        sample = _sample("drawn", f"drawn/b{i}", rng, **{"breast tumor": i < 10})
        (cache / "val" / "drawn").mkdir(parents=True, exist_ok=True)
        np.savez(cache / "val" / "drawn" / f"b{i}.npz", embedding=sample.embedding, concepts=np.array(["breast tumor"]),
                 masks=np.stack(list(sample.masks.values())), new_size=np.array([64, 64]))
    (data / "drawn").mkdir(parents=True)
    (data / "drawn" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    weights = tmp_path / "w.safetensors"
    shutil.copyfile(default_weights_path(), weights)
    args = ["calibrate-presence", "--data", str(data), "--cache", str(cache), "--weights", str(weights),
            "--datasets", "drawn"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "12 of 12 val items of drawn" in out and "breast tumor" in out
    table = json.loads((tmp_path / THRESHOLDS_FILE).read_text(encoding="utf-8"))
    assert table["recall"] == 0.97 and table["concepts"]["breast tumor"]["n_positive"] == 10
    assert main([*args[:-1], "nothing_here"]) == 2  # no cached item of that dataset: one clear line
    assert "no cached val items of nothing_here" in capsys.readouterr().err


def test_lite_backend_gates_each_concept_at_its_calibrated_threshold_unless_told_otherwise(segmenter, data_root):
    from PIL import Image

    from segmenter.lite.backend import default_weights_path
    from segmenter.types import Prompt

    backend = segmenter.backend
    shipped = load_thresholds(default_weights_path())
    assert backend.presence_threshold is None and backend.concept_thresholds == shipped
    if not shipped:
        pytest.skip("the shipped weights have no presence_thresholds.json")
    for name, threshold in shipped.items():  # a synonym of the concept is gated as the concept
        words = [w for w in backend.catalog.get(name).synonyms if backend.catalog.get(w).name == name]
        assert {backend.gate(w) for w in [name, *words]} == {threshold}
    assert backend.gate("a phrase of no concept") == 0.5
    # a normal breast ultrasound: the calibrated gate drops the mask exactly when presence is below it;
    # a threshold given with the call wins
    lines = (data_root / "busi" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    row = next(json.loads(line) for line in lines
               if '"label": "normal"' in line and '"split": "val"' in line)
    backend.set_image(np.asarray(Image.open(data_root / "busi" / row["image"]).convert("RGB")))
    found = backend.segment(Prompt(concept="breast tumor"))
    drawn = backend.segment(Prompt(concept="breast tumor"), presence_threshold=0.0)  # whatever the decoder draws
    assert found.presence == drawn.presence
    assert len(found.instances) == (0 if found.presence < backend.gate("breast tumor") else len(drawn.instances))
    assert backend.segment(Prompt(concept="breast tumor"), presence_threshold=1.01).instances == []
