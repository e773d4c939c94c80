"""An MLLM planner's concept choice for a volume: it sees a few slices, never the whole volume.

The model gets the question, the study's modality and one montage of ``SAMPLES`` slices spread over
the slices to be searched (each labelled with its index), and names the structures to segment on
every slice. Only pixel data and the modality are sent: no DICOM tag, no file name.
"""

from __future__ import annotations

import json
import re
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, Field, ValidationError

from agent.errors import PlannerError
from agent.mllm.base import ChatClient, image_data_url
from segmenter.catalog import load_catalog
from segmenter.study import Study
from segmenter.types import MAX_CONCEPT_CHARS

SAMPLES = 3  # slices in the montage the model sees
TILE = 384  # the longest side of each slice in it
MAX_CONCEPTS = 4
_PROMPT = (
    "You see {n} slices of a {modality} volume of {total} slices (the slice index is written on each). "
    "Question: {question}\n"
    "Which structures must be segmented on every slice to answer it? Known concepts: {known}. "
    'Reply with JSON only, e.g. {{"concepts": ["liver"]}}: one to {most} short anatomical phrases.'
)


class UnusableReply(PlannerError):
    """The model answered, but its reply names no usable concept (an endpoint failure is a plain PlannerError)."""


class ConceptReply(BaseModel):
    concepts: list[str] = Field(min_length=1, max_length=MAX_CONCEPTS)


def sample_slices(chosen: range, samples: int = SAMPLES) -> list[int]:
    """``samples`` slice indices spread evenly over ``chosen`` (fewer when it holds fewer)."""
    if len(chosen) <= samples:
        return list(chosen)
    return [chosen[int((k + 0.5) * len(chosen) / samples)] for k in range(samples)]  # the middle of each third


def labelled_montage(study: Study, indices: list[int], tile: int = TILE) -> np.ndarray:
    """The slices side by side, each scaled to ``tile`` on its longest side, its index drawn top left."""
    tiles = []
    for index in indices:
        image = study.slices[index]
        scale = tile / max(image.shape[:2])
        resized = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
        canvas = np.zeros((tile, resized.shape[1], 3), np.uint8)
        canvas[: resized.shape[0]] = resized
        cv2.putText(canvas, f"slice {index}", (6, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2, cv2.LINE_AA)
        tiles.append(canvas)
    return np.concatenate(tiles, axis=1)


def _parse(text: str) -> list[str]:
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if match is None:
        raise ValueError("no JSON object in the reply")
    reply = ConceptReply.model_validate(json.loads(match.group(0)))
    concepts = [c.strip() for c in reply.concepts if c.strip()]
    if not concepts or any(len(c) > MAX_CONCEPT_CHARS for c in concepts):
        raise ValueError(f"concepts must be 1 to {MAX_CONCEPT_CHARS} characters")
    return list(dict.fromkeys(concepts))


def mllm_concepts(client: ChatClient, question: str, study: Study, chosen: range) -> tuple[list[str], np.ndarray]:
    """The concepts the model names for ``question`` and the montage it was shown; ``UnusableReply`` when its
    reply names none (the caller decides what then), ``PlannerError`` when the endpoint fails."""
    indices = sample_slices(chosen)
    montage = labelled_montage(study, indices)
    prompt = _PROMPT.format(n=len(indices), modality=study.geometry.modality or "medical", total=study.shape[0],
                            question=question, known=", ".join(load_catalog().names), most=MAX_CONCEPTS)
    messages: list[dict[str, Any]] = [{"role": "user", "content": [
        {"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_data_url(montage)}}]}]
    reply = client.complete(messages)
    try:
        return _parse(reply.text or ""), montage
    except (ValueError, ValidationError) as exc:  # json.JSONDecodeError is a ValueError
        raise UnusableReply(f"{client.model} named no concept for the volume: {str(exc)[:200]}") from None
