"""The MLLM's per-mask check (``examine_masks``): one short request per candidate, read as accept / reject / unsure.

As SAM 3 Agent checks each mask on its own, a request holds only the question and the mask's facts
(``prompts/examine_mask.txt``), the clean crop and the same crop with the mask's outline: no tools, no
history. The reply is read as a JSON object with a "verdict" anywhere in it (fenced or in prose), else as
prose that starts with accept or reject; anything else (a refusal, a hedge, both words, nonsense) is
"unsure", and the verdict's reason says what the reply was.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from agent.mllm.base import LLMReply, image_data_url
from prompts import load_prompt
from tools.examine import OUTLINE_NAME
from tools.executor import brief
from tools.schemas import Candidate

Verdict = Literal["accept", "reject", "unsure"]
REASON = 200  # characters of a reason kept (the model's text goes back into the planner's prompt)
_WORDS: dict[str, Verdict] = {"accept": "accept", "accepted": "accept", "reject": "reject", "rejected": "reject"}
_LEADING = re.compile(r"^[\s*#>_`\"'\[(]*(?:(?:final\s+)?(?:verdict|answer|decision)\s*[:=-]\s*)?[\s*_`\"'\[(]*"
                      r"(accept(?:ed)?|reject(?:ed)?)\b", re.IGNORECASE)


class MaskVerdict(BaseModel):
    id: int
    verdict: Verdict
    reason: str = ""

    def line(self, candidate: Candidate | None, image_area: int) -> str:
        facts = f" {candidate.concept!r} (score {candidate.score:.2f}, area {100 * candidate.area / image_area:.1f}%)" \
            if candidate else ""
        return f"#{self.id}{facts}: {self.verdict}" + (f" - {self.reason}" if self.reason else "")


def check_messages(question: str, candidate: Candidate, image_area: int, clean: np.ndarray,
                   outlined: np.ndarray) -> list[dict[str, Any]]:
    """The one user message of a mask's check: the question and the mask's facts, then the two crops."""
    text = load_prompt("examine_mask", question=question, mask_id=candidate.id, concept=candidate.concept,
                       score=f"{candidate.score:.2f}", area=f"{100 * candidate.area / image_area:.1f}",
                       outline=OUTLINE_NAME)
    images = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in (clean, outlined)]
    return [{"role": "user", "content": [{"type": "text", "text": text}, *images]}]


def _from_json(text: str) -> tuple[Verdict, str] | None:
    """The first JSON object in ``text`` that has a "verdict"."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "verdict" in value:
            word = str(value["verdict"]).strip().lower()
            reason = value.get("reason")
            reason = brief(reason.strip(), REASON) if isinstance(reason, str) else ""
            if word in _WORDS:
                return _WORDS[word], reason
            return "unsure", f"the verdict was {brief(word, 40)!r}, not accept or reject" + \
                (f"; reason given: {reason}" if reason else "")
    return None


def parse_verdict(reply: LLMReply) -> tuple[Verdict, str]:
    """A check's reply as (verdict, reason); what cannot be read is "unsure" with what the reply said."""
    if reply.refusal:
        return "unsure", f"the model refused: {brief(reply.refusal.strip(), REASON)!r}"
    text = (reply.text or "").strip()
    found = _from_json(text)
    if found is not None:
        return found
    leading = _LEADING.match(text)
    if leading:  # "Accept. The outline follows the border." / "Verdict: reject - it covers a fold"
        rest = text[leading.end():].lstrip(" .:;,-*_`\"')]\n")
        return _WORDS[leading.group(1).lower()], brief(rest, REASON)
    if not text:
        return "unsure", "the reply was empty" + (" (cut off at the token limit)" if reply.finish_reason == "length"
                                                  else "")
    return "unsure", f"the reply was not accept or reject: {brief(text, REASON)!r}"
