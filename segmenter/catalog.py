"""The concept catalog: what the offline segmenter was trained to find, with synonyms.

The segmenter uses it for training phrases and tiling; the offline planner uses it to map a
question to concepts. One JSON file, shipped as package data.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, Field


class Concept(BaseModel):
    name: str
    modality: str
    description: str
    synonyms: list[str] = Field(default_factory=list)
    tile: int | None = None  # segment in native-resolution tiles of this side (small objects)


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

    def modalities(self) -> list[str]:
        return sorted({c.modality for c in self.concepts})


@lru_cache(maxsize=1)
def load_catalog() -> ConceptCatalog:
    text = resources.files("segmenter").joinpath("concepts.json").read_text(encoding="utf-8")
    return ConceptCatalog.model_validate(json.loads(text))
