"""The concept catalog: what the offline segmenter was trained to find, with synonyms.

The segmenter uses it for training phrases and tiling; the offline planner uses it to map a
question to concepts. One JSON file, shipped as package data.

Paired organs are data here: a concept with ``paired`` (lung; kidney, adrenal gland... as they are
added) can be asked with a side, and a lateral concept ("left lung") names its ``side`` and ``base``.
``lateral`` resolves a phrase to (side, base concept): the Segmenter then segments the base concept and
keeps that side by geometry (``segmenter.laterality``), so "left kidney" works for any paired concept
even without an entry of its own.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

# How the Lite backend draws a concept's final mask (segmenter/lite/refine.py): "none" keeps the concept
# decoder's mask; "box" has LiteMedSAM's own box decoder redraw each of its components from the
# component's (slightly expanded) box; "union" / "intersection" combine the two.
Refine = Literal["none", "box", "union", "intersection"]
REFINES: tuple[str, ...] = ("none", "box", "union", "intersection")

_SIDED = re.compile(r"(?:the\s+)?(?:patient'?s\s+)?(left|right)\s+(.+)", re.IGNORECASE)


class Concept(BaseModel):
    name: str
    modality: str
    description: str
    synonyms: list[str] = Field(default_factory=list)
    tile: int | None = None  # segment in native-resolution tiles of this side (small objects)
    paired: bool = False  # an organ with a left and a right one: may be asked as "left X" / "right X"
    side: Literal["left", "right"] | None = None  # a lateral concept: this side of ``base``
    base: str | None = None  # the paired concept a lateral one is segmented as
    refine: Refine = "none"  # see ``Refine``; a lateral concept is drawn as its base is
    # the trained concept parts that know this concept: a train-lite output folder of this name beside the
    # main weights (segmenter/lite/weights/<expert>/); None, or no such folder: the main weights
    expert: str | None = None
    # the expert for images of a known modality (a DICOM's Modality tag, upper case: {"CT": "abdomen_ct"}), where
    # the prompt says it (``Prompt.modality``) and that folder exists; else ``expert``
    modality_experts: dict[str, str] = Field(default_factory=dict)
    # anatomy: a volume holds at most this many 3D connected parts of it (one liver, two kidneys); the volume
    # clean-up keeps the largest (segmenter/volume.py). Not applied to a 2D image, where one organ may cut in two.
    max_parts_3d: int | None = Field(None, ge=1)

    @field_validator("modality_experts")
    @classmethod
    def _upper_case(cls, table: dict[str, str]) -> dict[str, str]:
        return {modality.strip().upper(): expert for modality, expert in table.items()}

    def expert_for(self, modality: str | None) -> str | None:
        """The expert named for an image of ``modality`` (None: not known), else this concept's own."""
        return self.modality_experts.get((modality or "").upper(), self.expert)

    @property
    def experts(self) -> set[str]:
        """Every expert this concept may be sent to."""
        return {name for name in (self.expert, *self.modality_experts.values()) if name}


class ConceptCatalog(BaseModel):
    version: int
    concepts: list[Concept]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def get(self, name: str) -> Concept | None:
        """Exact lookup by canonical name or synonym, case-insensitive."""
        key = name.strip().lower()
        for concept in self.concepts:
            if key == concept.name or key in (s.lower() for s in concept.synonyms):
                return concept
        return None

    def lateral(self, phrase: str) -> tuple[Literal["left", "right"], Concept] | None:
        """(side, paired base concept) for a lateral phrase ("left lung", "the patient's right kidney"),
        else None. A lateral entry's own synonyms count; otherwise "left"/"right" + a paired concept."""
        concept = self.get(phrase)
        if concept is not None and concept.side is not None and concept.base is not None:
            base = self.get(concept.base)
            return (concept.side, base) if base is not None else None
        match = _SIDED.fullmatch(phrase.strip())
        if concept is None and match:
            base = self.get(match.group(2))
            if base is not None and base.paired:
                return match.group(1).lower(), base  # type: ignore[return-value]
        return None

    @model_validator(mode="after")
    def _lateral_bases(self) -> ConceptCatalog:
        for concept in self.concepts:
            if (concept.side is None) != (concept.base is None):
                raise ValueError(f"concept {concept.name!r}: 'side' and 'base' go together")
            base = self.get(concept.base) if concept.base else None
            if concept.base and (base is None or not base.paired):
                raise ValueError(f"concept {concept.name!r}: base {concept.base!r} is not a paired concept")
            if base is not None and (concept.expert, concept.modality_experts) != (base.expert,
                                                                                    base.modality_experts):
                raise ValueError(f"concept {concept.name!r}: a lateral concept uses its base's experts "
                                 f"({base.expert!r}, {base.modality_experts})")
            if concept.base and concept.refine != "none":
                raise ValueError(f"concept {concept.name!r}: a lateral concept is segmented as its base; "
                                 f"set 'refine' on {concept.base!r}")
        return self

    def modalities(self) -> list[str]:
        return sorted({c.modality for c in self.concepts})


@lru_cache(maxsize=1)
def load_catalog() -> ConceptCatalog:
    text = resources.files("segmenter").joinpath("concepts.json").read_text(encoding="utf-8")
    return ConceptCatalog.model_validate(json.loads(text))
