"""Per-case records (``results.jsonl``) -> flat summary rows per mode, dataset and concept.

Rows: ``{"mode", "dataset", "concept", "n", "dice", "iou", "giou", "ciou", "presence_acc",
"presence_sens", "n_pos", "n_neg", "hd95", "seconds_per_case", "errors"}``: ``presence_acc`` is presence
specificity over the ``n_neg`` cases with an empty target, ``presence_sens`` presence sensitivity over the
``n_pos`` cases with one (``evals.metrics``); rows written before these two existed lack them. ``"*"`` in
``dataset`` and/or ``concept`` aggregates over all of them. ``n`` counts every case; a case that raised
counts in ``errors`` *and* in the metrics as the empty prediction it delivered (scored against its target by
the runner). One whose target could not be read either (an unreadable image) counts as a miss: Dice = IoU = 0 on
a non-empty target, adding nothing to cIoU's sums. A failing planner therefore lowers the
scores instead of leaving only its easy cases in the table.

``seconds_per_case`` is the time the mode would take alone: its own per-case work plus the
image encodes its cases need, shared out over them (the runner encodes each image once, for
all modes, and records who paid for it).

Volume cases (``evals.volumes``) are scored per volume: ``dice`` is volumetric, ``hd95_mm`` in
millimetres (``hd95`` stays pixels, for 2D cases only), and ``seconds_per_volume`` is the time spent
on each volume (per-concept rows: that concept's share of the volume's one pass). They form rows of
their own dataset only: the ``*`` dataset rows stay over 2D cases, as before volumes were scored.

Measurement cases (``evals.measures``) form rows whose ``concept`` is the measurement ("cup-to-disc
ratio", "cardiothoracic ratio"), per dataset and over ``*`` datasets: ``mae`` is the mean absolute
error of the ratio against the ratio on the ground-truth masks over the ``n_measured`` cases that gave
one (of ``n``); their segmentation columns are empty.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from evals.metrics import CaseScore, aggregate

FIELDS = ("mode", "dataset", "concept", "n", "dice", "iou", "giou", "ciou", "presence_acc", "presence_sens", "n_pos",
          "n_neg", "hd95", "hd95_mm",
          "seconds_per_case", "seconds_per_volume", "mae", "n_measured", "errors")
SCORE_FIELDS = tuple(CaseScore.model_fields)


def _image_encode_seconds(records: list[dict]) -> dict[str, float]:
    """Encoder seconds per image: the most any one mode spent on it (one full encode, tiles included)."""
    per_mode: dict[tuple[str, str], float] = defaultdict(float)
    for r in records:
        per_mode[(r["image"], r["mode"])] += float(r.get("encode_seconds") or 0.0)
    out: dict[str, float] = defaultdict(float)
    for (image, _), seconds in per_mode.items():
        out[image] = max(out[image], seconds)
    return out


def _round(value: str | float | None) -> str | float | None:
    return round(value, 4) if isinstance(value, float) else value


# a failed case with no readable target: a miss on an unknown (taken as non-empty) target
_MISS = CaseScore(target_area=0, pred_area=0, intersection=0, union=0, ignored=0, target_empty=False,
                  pred_empty=True, dice=0.0, iou=0.0)


def case_score(record: dict) -> CaseScore:
    """A record's scores; a failed one without scores (its target unread) is a miss (see the module doc)."""
    if record.get("error") and "target_area" not in record:
        return _MISS
    return CaseScore(**{k: record[k] for k in SCORE_FIELDS if k in record})


def _own_seconds(records: list[dict]) -> float:
    return sum(float(r.get("seconds") or 0.0) + float(r.get("encode_seconds") or 0.0) for r in records)


def _row(mode: str, dataset: str, concept: str, group: list[dict], encode: dict[str, float], kind: str) -> dict:
    ok = [r for r in group if not r.get("error")]
    metrics: dict = dict.fromkeys(FIELDS)
    metrics.update({"seconds_per_case": None, "seconds_per_volume": None})
    if kind == "measure":
        measured = [float(r["abs_error"]) for r in ok if r.get("abs_error") is not None]
        metrics.update({"n": len(group), "n_measured": len(measured),
                        "mae": sum(measured) / len(measured) if measured else None})
    else:
        metrics.update(aggregate(case_score(r) for r in group))
    if ok and kind == "volume":  # each volume's own pass; no encode is shared with another mode
        metrics["seconds_per_case"] = _own_seconds(ok) / len(ok)
        metrics["seconds_per_volume"] = _own_seconds(ok) / len({r["image"] for r in ok})
    elif ok:
        own = sum(float(r.get("seconds") or 0.0) for r in ok)
        shared = sum(encode.get(image, 0.0) for image in {r["image"] for r in ok})
        metrics["seconds_per_case"] = (own + shared) / len(ok)
    row = {**metrics, "mode": mode, "dataset": dataset, "concept": concept, "errors": len(group) - len(ok)}
    return {k: _round(row[k]) for k in FIELDS}


def _kind(record: dict) -> str:
    if record.get("measure"):
        return "measure"
    return "volume" if record.get("source") == "volume" else "segment"


def _group_keys(record: dict, kind: str) -> list[tuple[str, str, str]]:
    mode, dataset, concept = record["mode"], record["dataset"], record["concept"]
    if kind == "measure":
        return [(mode, dataset, concept), (mode, "*", concept)]
    if kind == "volume":
        return [(mode, dataset, concept), (mode, dataset, "*")]
    return [(mode, d, c) for d in (dataset, "*") for c in (concept, "*")]


def summarize(records: Iterable[dict]) -> list[dict]:
    """Rows for every (mode, dataset, concept), (mode, dataset, *), (mode, *, concept) and (mode, *, *) of 2D
    cases, (mode, dataset, concept) and (mode, dataset, *) of volumes, and (mode, dataset | *, measurement)."""
    records = list(records)
    encode = _image_encode_seconds(records)
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    kinds: dict[tuple[str, str, str], str] = {}
    for r in records:
        kind = _kind(r)
        for key in _group_keys(r, kind):
            groups[key].append(r)
            kinds.setdefault(key, kind)
    mode_order = {m: i for i, m in enumerate(("direct", "box", "agent"))}

    def order(key: tuple[str, str, str]):
        mode, dataset, concept = key
        return (mode_order.get(mode, 99), mode, kinds[key] == "measure", dataset == "*", dataset, concept == "*",
                concept)

    return [_row(*key, groups[key], encode, kinds[key]) for key in sorted(groups, key=order)]
