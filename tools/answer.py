"""The finishing tools: select the masks that answer the question, or report that there is none."""

from __future__ import annotations

from tools.context import ToolContext
from tools.schemas import ReportNoMaskArgs, Selection, SelectMasksArgs, ToolCall, ToolError, ToolResult


def select_masks(args: SelectMasksArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    known = {c.id for c in ctx.candidates}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        raise ToolError(f"unknown mask id(s) {unknown}; current candidates are {sorted(known) or 'none'}")
    selection = Selection(ids=list(dict.fromkeys(args.ids)), answer=args.answer.strip())
    return ToolResult(call=call, text=f"selected {selection.ids}", selection=selection)


def report_no_mask(args: ReportNoMaskArgs, ctx: ToolContext, call: ToolCall) -> ToolResult:
    selection = Selection(ids=[], answer=args.answer.strip())
    return ToolResult(call=call, text="reported that nothing answers the question",
                      selection=selection)
