"""The finishing tools: select the masks that answer the question, or report that there is none."""

from __future__ import annotations

from tools.schemas import Candidate, ReportNoMaskArgs, Selection, SelectMasksArgs, ToolError


def select_masks(candidates: list[Candidate], args: SelectMasksArgs) -> Selection:
    known = {c.id for c in candidates}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        raise ToolError(f"unknown mask id(s) {unknown}; current candidates are {sorted(known) or 'none'}")
    return Selection(ids=list(dict.fromkeys(args.ids)), answer=args.answer.strip())


def report_no_mask(args: ReportNoMaskArgs) -> Selection:
    return Selection(ids=[], answer=args.answer.strip())
