"""Volume cases: a NIfTI volume and its NIfTI labels, segmented slice by slice and scored per volume.

The volume is read by ``segmenter.study_io.load_study`` (the loader of every entry point), so the
slices, their order and the geometry are the ones ``run`` and ``segment`` use; each label is read
onto the same (slice, row, col) grid (``evals.cases.read_label_volume``). Scores are volumetric:
Dice and IoU over all voxels, HD95 in millimetres with the volume's spacing, one volume one case.

- ``direct``: every concept of the volume's cases at once through ``segmenter.volume.segment_volume``
  (each slice encoded once, all concepts prompted on it, then 3D clean-up), so a volume costs one
  encoder pass whatever the number of concepts; each case is charged an equal share of that time.
- ``agent``: each case's question through ``Agent.run`` on the study (the volume path of
  ``agent.volume``): one full pass over the slices per question.
- ``box`` does not take volumes.

``slices`` (``--slices``) restricts the slices segmented: "START:END", or "target", the span of slices
where the volume's labels (all its cases') are non-empty. The others stay empty in the prediction and
the scores are still over the whole volume; "target" is an oracle (false positives outside the span are
never made), which the report says.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from evals.cases import EvalCase, VolumeLabels
from evals.metrics import score_case
from evals.modes import EncodeMeter, question_for
from evals.runtime import Runtime, Task, base_record, safe_name
from segmenter.study import Study
from segmenter.study_io import load_study
from segmenter.volume import VolumeResult, parse_slices, segment_volume
from tools.measure import volume as volume_of

TARGET_SLICES = "target"


def chosen_slices(spec: str | None, study: Study, targets: list[np.ndarray]) -> range:
    """The slices to segment: all, a "START:END" range, or the span where any target is non-empty."""
    if spec != TARGET_SLICES:
        return parse_slices(spec, study.shape[0])
    present = np.flatnonzero(np.logical_or.reduce([t.reshape(t.shape[0], -1).any(axis=1) for t in targets]))
    if not present.size:
        return range(study.shape[0])  # nothing labelled: the whole volume, where any finding is a false positive
    return range(int(present[0]), int(present[-1]) + 1)


def _spacing(study: Study) -> tuple[float, float, float] | None:
    geometry = study.geometry
    if geometry.pixel_spacing is None:
        return None
    return (geometry.slice_spacing or 1.0, *geometry.pixel_spacing)


def _millilitres(mask: np.ndarray, study: Study) -> float | None:
    measured = volume_of(mask, study.geometry)
    return round(measured.value, 3) if measured.unit == "mL" else None


def _scored(runtime: Runtime, record: dict[str, Any], pred: np.ndarray, target: np.ndarray, study: Study,
            chosen: range) -> dict[str, Any]:
    spacing = _spacing(study)
    score = score_case(pred, target, with_hd95=runtime.config.hd95 and spacing is not None, spacing=spacing)
    record.update(score.model_dump())
    record.update({"slices": [chosen.start, chosen.stop], "n_slices": len(chosen),
                   "pred_ml": _millilitres(pred, study), "target_ml": _millilitres(target, study)})
    if runtime.config.save_masks:
        from segmenter.export import save_nifti

        folder = runtime.config.out / "masks" / record["mode"]
        folder.mkdir(parents=True, exist_ok=True)
        save_nifti(pred, study.geometry, folder / f"{safe_name(record['key'])}.nii.gz")
    return record


def _failed(runtime: Runtime, mode: str, case: EvalCase, exc: Exception, target: np.ndarray | None,
            study: Study | None, chosen: range | None) -> dict[str, Any]:
    """A failed case: its error, scored as the empty prediction it delivered where its target was read."""
    record = {**base_record(runtime, mode, case), "error": f"{type(exc).__name__}: {exc}"}
    if target is not None and study is not None:
        record.update(score_case(np.zeros_like(target), target, with_hd95=False).model_dump())
        if chosen is not None:
            record.update({"slices": [chosen.start, chosen.stop], "n_slices": len(chosen)})
    return record


def _direct(runtime: Runtime, study: Study, tasks: list[Task], targets: dict[str, np.ndarray],
            chosen: range) -> list[dict[str, Any]]:
    concepts = list(dict.fromkeys(c.concepts[0] for _, c in tasks))
    start = time.perf_counter()
    with EncodeMeter() as meter:
        try:
            result: VolumeResult = segment_volume(runtime.segmenter.handle(), study, concepts, slices=chosen)
        except Exception as exc:  # noqa: BLE001  (recorded per case; the run goes on)
            return [_failed(runtime, m, c, exc, targets[c.key], study, chosen) for m, c in tasks]
    wall = time.perf_counter() - start
    encode = meter.ms / 1000
    share = 1.0 / len(tasks)
    records = []
    for mode, case in tasks:
        found = result.concepts[case.concepts[0]]
        record = base_record(runtime, mode, case)
        record.update({"n_instances": len(found.components), "volume_seconds": round(wall, 3),
                       "encode_seconds": round(encode * share, 4), "seconds": round((wall - encode) * share, 4)})
        try:
            records.append(_scored(runtime, record, found.mask, targets[case.key], study, chosen))
        except Exception as exc:  # noqa: BLE001
            records.append(_failed(runtime, mode, case, exc, targets[case.key], study, chosen))
    return records


def _agent(runtime: Runtime, study: Study, case: EvalCase, target: np.ndarray, chosen: range) -> dict[str, Any]:
    question = question_for(case).replace("in this image", "in this volume")
    record = {**base_record(runtime, "agent", case), "question": question}
    start = time.perf_counter()
    with EncodeMeter() as meter:
        try:
            result = runtime.agent.run(question, image=study, slices=chosen)
            pred = np.zeros(study.shape, dtype=bool)
            for found in (result.volume.concepts.values() if result.volume is not None else []):
                pred |= found.mask
        except Exception as exc:  # noqa: BLE001
            return _failed(runtime, "agent", case, exc, target, study, chosen)
    wall = time.perf_counter() - start
    encode = meter.ms / 1000
    record.update({"answer": result.answer[:500], "planner": result.planner, "concepts_tried": result.concepts_tried,
                   "volume_seconds": round(wall, 3), "encode_seconds": round(encode, 4),
                   "seconds": round(wall - encode, 4)})
    try:
        return _scored(runtime, record, pred, target, study, chosen)
    except Exception as exc:  # noqa: BLE001
        return _failed(runtime, "agent", case, exc, target, study, chosen)


def _modality(case: EvalCase) -> str | None:
    """A manifest's modality word as the loader's: only CT changes the window (HU presets)."""
    return "CT" if str(case.metadata.get("modality", "")).lower() == "ct" else None


def run_volume(runtime: Runtime, tasks: list[Task]) -> list[dict[str, Any]]:
    """All (mode, case) pairs of one volume: load it once, read each case's labels, segment, score."""
    first = tasks[0][1]
    try:
        study = load_study(first.image, modality=_modality(first))
    except Exception as exc:  # noqa: BLE001  (an unreadable volume: every case on it fails the same way)
        return [_failed(runtime, m, c, exc, None, None, None) for m, c in tasks]
    records: list[dict[str, Any]] = []
    targets: dict[str, np.ndarray] = {}
    for mode, case in tasks:
        try:
            if not isinstance(case.target, VolumeLabels):
                raise ValueError(f"case {case.key}: a volume case needs NIfTI labels")
            targets.setdefault(case.key, case.target.load_volume(study))
        except Exception as exc:  # noqa: BLE001
            records.append(_failed(runtime, mode, case, exc, None, None, None))
    ready = [(m, c) for m, c in tasks if c.key in targets]
    if not ready:
        return records
    try:
        chosen = chosen_slices(runtime.config.slices, study, list(targets.values()))
    except ValueError as exc:
        return records + [_failed(runtime, m, c, exc, targets[c.key], study, None) for m, c in ready]
    direct = [(m, c) for m, c in ready if m == "direct"]
    if direct:
        records.extend(_direct(runtime, study, direct, targets, chosen))
    records.extend(_agent(runtime, study, c, targets[c.key], chosen) for m, c in ready if m == "agent")
    return records
