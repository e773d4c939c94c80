"""Does a question ask for a measurement, and which masks does that measurement need?

"Is the heart enlarged?" asks for the cardiothoracic ratio (lungs + cardiomediastinum); "what is the
cup-to-disc ratio?" for the vertical CDR (optic disc + optic cup); "how many nuclei?" for a count;
"how big is the polyp?" for sizes (area and diameters, volume for a volume). The offline planner
segments what is needed and calls the ``measure`` tool on its selection.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from tools.measure import MeasureWhat

_CTR = re.compile(r"cardio-?thoracic|\bctr\b|cardiomegal\w*|\bheart\b[^.?!]*\b(?:enlarg\w*|big|large|size|dilat\w*)"
                  r"|\b(?:enlarg\w*|big|large|size of)\b[^.?!]*\bheart\b")
_CDR = re.compile(r"\bcup[\s-]*(?:to[\s-]*)?disc\b|\bcup\s*/\s*disc\b|\bcdr\b|\bc/d\b")
_COUNT = re.compile(r"\bhow many\b|\bcount\b|\bnumber of\b")
_DIAMETER = re.compile(r"\bdiameters?\b|\bhow (?:long|wide)\b|\blength\b|\bwidth\b")
_VOLUME = re.compile(r"\bvolumes?\b|\bhow much (?:tissue|space)\b")
_AREA = re.compile(r"\b(?:what(?:'s| is)?|its|their|surface) (?:the )?areas?\b")
_SIZE = re.compile(r"\bhow (?:big|large|small|extensive)\b|\bmeasur\w*|\bsizes?\b|\bdimensions?\b|\benlarg\w*"
                   r"|\bhow much\b")


class MeasureIntent(BaseModel):
    what: MeasureWhat | None = None  # None: every measurement that applies
    needs: list[str] = Field(default_factory=list)  # concepts the measurement needs segmented


def measure_intent(question: str) -> MeasureIntent | None:
    """The measurement a question asks for, or None when it asks for none."""
    q = question.lower()
    if _CTR.search(q):
        return MeasureIntent(what="ctr", needs=["lung", "cardiomediastinum"])
    if _CDR.search(q):
        return MeasureIntent(what="cdr", needs=["optic disc", "optic cup"])
    if _COUNT.search(q):
        return MeasureIntent(what="count")
    if _DIAMETER.search(q):
        return MeasureIntent(what="diameter")
    if _VOLUME.search(q):
        return MeasureIntent(what="volume")
    if _AREA.search(q):
        return MeasureIntent(what="area")
    if _SIZE.search(q):
        return MeasureIntent()
    return None
