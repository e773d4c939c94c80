"""What a tool call may use: the image and its geometry, the segmenter, the thread's masks and candidates,
the ids to give.

The agent builds one ``ToolContext`` per batch of calls; tools never see the agent itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from segmenter.facade import Segmenter
from segmenter.study import Geometry
from tools.schemas import Candidate, ToolResult


class MaskAccess(Protocol):
    """The thread's candidate masks by id (a mask store behind it)."""

    def get(self, mask_id: int) -> np.ndarray: ...

    def put(self, masks: dict[int, np.ndarray]) -> None: ...


@dataclass
class ToolContext:
    image: np.ndarray
    segmenter: Segmenter  # already set to ``image``
    masks: MaskAccess
    candidates: list[Candidate] = field(default_factory=list)  # every candidate of the thread: what may be selected
    shown: list[Candidate] = field(default_factory=list)  # what the planner is looking at: what examine crops
    next_id: int = 1  # the id the next new candidate gets
    round: int = 1  # the segment round new candidates belong to
    turn: int = 1  # the conversation turn new candidates belong to
    tried: dict[str, ToolResult] = field(default_factory=dict)  # this turn's segmentation calls that ran, by key
    geometry: Geometry = field(default_factory=Geometry)  # the image's spacing (unknown for a photo): for measure

    def add(self, candidates: list[Candidate]) -> None:
        """Count new candidates in, so a later call of the same batch numbers on from them."""
        self.candidates = [*self.candidates, *candidates]
        self.next_id += len(candidates)
