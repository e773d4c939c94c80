"""The ``measure`` tool: sizes, counts and ratios of candidate masks, in the image's units (``tools.measure``)."""

from __future__ import annotations

import numpy as np

from tools.context import ToolContext
from tools.measure import describe, measure
from tools.schemas import MeasureArgs, ToolCall, ToolError, ToolResult


def measure_masks(args: MeasureArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    """Measure the given candidates, grouped by concept, with the run's geometry."""
    known = {c.id: c for c in ctx.candidates}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        raise ToolError(f"unknown mask id(s) {unknown}; current candidates are {sorted(known) or 'none'}")
    ids = list(dict.fromkeys(args.ids))
    groups: dict[str, dict[int, np.ndarray]] = {}
    for i in ids:
        groups.setdefault(known[i].concept, {})[i] = ctx.masks.get(i)
    try:
        found = measure(groups, ctx.geometry, args.what)
    except ValueError as exc:
        raise ToolError(str(exc)) from exc
    if not found:
        need = {"cdr": "an optic disc and an optic cup", "ctr": "lungs and a cardiomediastinum"}
        raise ToolError(f"nothing to measure: {args.what} needs {need.get(str(args.what), 'non-empty masks')} "
                        f"among the ids; got {sorted(groups)}")
    return ToolResult(call=call, ids=ids, measurements=found, text=describe(found))
