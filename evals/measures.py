"""Measurement cases: a ratio computed on a mode's masks against the same ratio on the ground-truth masks.

A manifest row that holds the masks a ratio needs gets one measurement case besides its concept
cases: the vertical cup-to-disc ratio (CDR) from "optic disc" + "optic cup" (Drishti-GS1), the
cardiothoracic ratio (CTR) from "cardiomediastinum" + "lung" (chest X-rays). Both sides go through
``tools.measure`` (``ratios``), so the reference is exactly what the agent's measure tool would say
on perfect masks, and the error is the segmentation's alone.

- ``direct``: each concept prompted by name, the union of its instances as its mask.
- ``agent``: the agent is asked the measurement's question and its ``measurements`` are read.
- ``box`` does not take measurement cases (the boxes would be the answer's own ground truth).

A record holds ``value`` (predicted), ``reference`` (ground truth) and ``abs_error``; where the
prediction allows no ratio (a mask came back empty, the agent stated none) ``value`` is None and
``unmeasured`` says why: that case is no error of the run (it is not retried), it counts in ``n``
but not in the mean absolute error, and the summary's ``n_measured`` says how many did.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evals.cases import MEASURE_NAMES, EvalCase, MaskFiles, Measure, read_mask_png
from segmenter.facade import Segmenter
from tools.measure import ratios

if TYPE_CHECKING:
    from agent.core import Agent

# the masks each measurement needs, in the names of the manifests (and of the catalog)
MEASURE_CONCEPTS: dict[str, tuple[str, ...]] = {"cdr": ("optic disc", "optic cup"),
                                                "ctr": ("cardiomediastinum", "lung")}
MEASURE_QUESTIONS: dict[str, str] = {"cdr": "What is the cup-to-disc ratio?",
                                     "ctr": "Is the heart enlarged? Give the cardiothoracic ratio."}


def measure_cases(base: EvalCase, masks: dict[str, Path], concepts: set[str] | None) -> list[EvalCase]:
    """The measurement cases of one manifest row (``base``: its first concept case, for id, image, split and
    metadata): one per ratio whose masks the row holds and whose concepts ``concepts`` keeps (None: all)."""
    cases = []
    for measure, needed in MEASURE_CONCEPTS.items():
        if not all(c in masks for c in needed) or (concepts is not None and not set(needed) <= concepts):
            continue
        cases.append(base.model_copy(update={
            "key": f"manifest:{base.dataset}/{base.id}#{MEASURE_NAMES[measure]}",
            "source": "measure", "concepts": list(needed), "measure": measure,
            "target": MaskFiles(paths={c: masks[c] for c in needed}),
        }))
    return cases


def ratio(masks: dict[str, np.ndarray], measure: Measure) -> float:
    """The ratio ``tools.measure`` computes on these masks (concept -> mask); ValueError when it cannot."""
    found = ratios({concept: {i: mask} for i, (concept, mask) in enumerate(masks.items(), start=1)}, measure)
    if not found:
        raise ValueError(f"no {MEASURE_NAMES[measure]}: it needs {' and '.join(MEASURE_CONCEPTS[measure])}")
    return float(found[0].value)


def _direct(seg: Segmenter, image: np.ndarray, case: EvalCase) -> tuple[float | None, str | None, dict[str, Any]]:
    seg.set_image(image)  # a cache hit: the image's concept cases encoded it
    masks = {concept: seg.segment(concept=concept).union_mask for concept in case.concepts}
    areas = {concept: int(mask.sum()) for concept, mask in masks.items()}
    try:
        return ratio(masks, case.measure), None, {"pred_areas": areas}  # type: ignore[arg-type]
    except ValueError as exc:
        return None, str(exc), {"pred_areas": areas}


def _agent(agent: Agent, image: np.ndarray, case: EvalCase) -> tuple[float | None, str | None, dict[str, Any]]:
    question = MEASURE_QUESTIONS[case.measure or ""]
    result = agent.run(question, image=image)
    kind = MEASURE_NAMES[case.measure or ""]
    stated = [m.value for m in result.measurements if m.kind == kind]
    info = {"question": question, "answer": result.answer[:500], "planner": result.planner,
            "concepts_tried": result.concepts_tried}
    if not stated:
        return None, f"the agent stated no {kind}", info
    return float(stated[0]), None, info


def answer_measure(seg: Segmenter, agent: Agent | None, image: np.ndarray, mode: str, case: EvalCase) -> dict[str, Any]:
    """The record fields of one measurement case: the reference on the ground truth first (a target that
    allows no ratio is a data error and raises), then the mode's value and its absolute error."""
    if case.measure is None or not isinstance(case.target, MaskFiles):
        raise ValueError(f"case {case.key} is not a measurement case")
    truth = {c: read_mask_png(path, image.shape[:2]) for c, path in case.target.paths.items()}
    reference = ratio(truth, case.measure)
    if mode == "direct":
        value, why, info = _direct(seg, image, case)
    elif mode == "agent" and agent is not None:
        value, why, info = _agent(agent, image, case)
    else:
        raise ValueError(f"mode {mode} does not answer measurement cases")
    return {**info, "measure": case.measure, "reference": round(reference, 4),
            "value": None if value is None else round(value, 4),
            "abs_error": None if value is None else round(abs(value - reference), 4), "unmeasured": why}
