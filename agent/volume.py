"""A question about a volume: pick the concept(s), segment them slice by slice, clean up in 3D, answer in mL.

``Agent.stream`` hands a multi-slice ``Study`` (or a path ``load_study`` reads as one) here. The
concepts come from the question as for a 2D image: an MLLM planner's model names them from a montage
of three labelled slices; the offline planner's concept picker reads the question with the study's
modality as a cue (and looks at one middle slice). Neither sees the whole volume. Every
chosen slice is encoded once and all concepts are prompted on it (``segmenter.volume``); progress
streams as step events per batch of slices. The answer states each concept's volume (mL where the
voxel size is known), its components and the slices it spans; the overlay is the key slice (largest
extent), and a montage of it with its neighbours, slice index drawn, is the overlay event's image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from agent.errors import AgentError
from agent.mllm.base import ChatClient
from agent.planners.base import Planner
from agent.results import AgentResult, ConceptMask, StepEvent
from agent.volume_mllm import UnusableReply, mllm_concepts, sample_slices
from agent.volume_output import VolumeOutput
from segmenter.catalog import load_catalog
from segmenter.facade import Segmenter
from segmenter.overlay import render_overlay
from segmenter.study import DICOM_MODALITIES, Study
from segmenter.study_io import load_study, sniff
from segmenter.types import Instance
from segmenter.volume import ConceptVolume, VolumeResult, VolumeSegmentation, parse_slices
from tools.measure import Measurement, count, diameters, volume


class Agent(Protocol):
    """What a volume run uses of ``agent.core.Agent`` (a Protocol: agent.core imports this module)."""

    planner: Planner
    segmenter: Segmenter

# the catalog's modality words for a study's DICOM modality (a cue for ambiguous words such as "tumor")
MODALITY_CUES = {"MR": "mri"}
PROGRESS_EVENTS = 10  # about this many progress events per run, whatever the slice count
MONTAGE_NEIGHBOURS = 1  # slices each side of the key slice in the montage


def as_study(image: Any) -> Study | None:
    """``image`` as a ``Study`` when it is one or a path to a DICOM file, series folder, zip or NIfTI (read by
    ``load_study``, so a one-slice DICOM or NIfTI keeps its pixel spacing); None for a photo or an array."""
    if isinstance(image, Study):
        return image
    if not isinstance(image, (str, Path)):
        return None
    path = Path(image)
    if path.is_file():
        with path.open("rb") as stream:
            kind = sniff(stream.read(544), path.name)
        if kind == "image":
            return None
    elif not path.is_dir():
        return None  # the 2D loader names the missing file
    return load_study(path)  # the default window; the CLI loads with --window / --slice-axis itself


def pick_concepts(agent: Agent, question: str, study: Study, chosen: range) -> tuple[list[str], str, np.ndarray | None]:
    """The concepts to segment, how they were chosen, and the montage an MLLM was shown (None offline).

    An MLLM planner's model names them from a few labelled slices (``agent.volume_mllm``); where its reply
    names none, or for the offline planner, the concept picker reads the question with the study's
    modality as a cue and the middle slice for the image's look.
    """
    from agent.concepts import default_picker

    note = ""
    client = getattr(agent.planner, "client", None)
    if isinstance(client, ChatClient):
        try:
            concepts, montage = mllm_concepts(client, question, study, chosen)
            return concepts, f"named by {client.model} from slices {sample_slices(chosen)}", montage
        except UnusableReply as exc:  # an endpoint failure is not caught: the run fails, as a 2D run does
            note = f"{exc}; picked from the question instead: "
    picker = getattr(agent.planner, "picker", None) or default_picker()
    cue = MODALITY_CUES.get((study.geometry.modality or "").upper())
    pick = picker.pick(f"{question} ({cue})" if cue else question, image=study.slices[chosen[len(chosen) // 2]])
    return pick.concepts, note + "; ".join(f"{c}: {pick.how.get(c, 'named')}" for c in pick.concepts), None


def unvalidated(concepts: list[str], study: Study) -> list[str]:
    """The concepts whose catalog modality is not the study's (liver, trained on MR, asked of a CT): their
    masks are unvalidated there, and an empty one is no evidence of absence. [] where the modality is unknown."""
    seen = DICOM_MODALITIES.get((study.geometry.modality or "").upper())
    if seen is None:
        return []
    catalog = load_catalog()
    return [c for c in concepts if (entry := catalog.get(c)) is not None and entry.modality != seen]


def _key_slice(result: VolumeResult) -> int:
    """The slice with the largest masked area over all concepts (the middle of the range when nothing was found)."""
    total = sum(v.mask.reshape(result.shape[0], -1).sum(axis=1) for v in result.concepts.values())
    if not np.any(total):
        return result.slices[len(result.slices) // 2]
    return int(np.argmax(total))


def _slice_overlay(study: Study, result: VolumeResult, index: int) -> np.ndarray:
    """One slice with every concept's cross-section outlined, labelled, and the slice index drawn."""
    masks = [v.mask[index] for v in result.concepts.values()]
    canvas = render_overlay(study.slices[index], masks, list(result.concepts))
    scale = max(0.4, min(canvas.shape[:2]) / 500)
    cv2.putText(canvas, f"slice {index}", (4, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 0), max(1, int(round(scale * 2))), cv2.LINE_AA)
    return canvas


def montage(study: Study, result: VolumeResult, key: int) -> np.ndarray:
    """The key slice and its neighbours side by side (a few slices, never the whole volume)."""
    lo, hi = result.slices.start, result.slices.stop - 1
    indices = [i for i in range(key - MONTAGE_NEIGHBOURS, key + MONTAGE_NEIGHBOURS + 1) if lo <= i <= hi]
    return np.concatenate([_slice_overlay(study, result, i) for i in indices], axis=1)


def _measurements(result: VolumeResult, study: Study) -> list[Measurement]:
    """Per concept: its volume and component count; the largest component's diameters on its largest slice."""
    out: list[Measurement] = []
    next_id = 1
    for concept, found in result.concepts.items():
        ids = list(range(next_id, next_id + len(found.components)))
        next_id += len(ids)
        if not ids:
            continue
        out.append(volume(found.mask, study.geometry, concept, ids))
        out.append(count(concept, ids))
        out.extend(diameters(found.component_mask(1), study.geometry, concept, ids[:1]))
    return out


def _span(found: ConceptVolume) -> str:
    first = min(c.bbox[0] for c in found.components)
    last = max(c.bbox[3] for c in found.components) - 1
    return f"slice {first}" if first == last else f"slices {first}-{last}"


def _extent(mine: Mapping[str, Measurement], parts: int) -> str:
    """", largest part 26.6 x 18.5 mm on slice 90": the (largest) component's diameters on its widest slice."""
    longest, across = mine.get("longest diameter"), mine.get("perpendicular diameter")
    if longest is None or across is None:
        return ""
    return (f", {'largest part ' if parts > 1 else ''}{longest.value:.1f} x {across.value:.1f} {longest.unit}"
            f" on slice {longest.slice_index}")


def answer_text(result: VolumeResult, measurements: list[Measurement], untrained: list[str] | None = None,
                modality: str = "") -> str:
    """Per concept: its volume, components and slices, or that it was not found on the slices searched;
    ``untrained``: concepts the segmenter was not validated on for this ``modality`` (``unvalidated``)."""
    searched = result.slices
    where = f"slices {searched.start}-{searched.stop - 1}" if len(searched) > 1 else f"slice {searched.start}"
    sentences = []
    for concept, found in result.concepts.items():
        if not found.components:
            scores = [(p, i) for i, p in enumerate(found.presence) if p is not None]
            best, at = max(scores)
            sentences.append(f"No {concept} was found on {where} (highest presence {best:.2f}, on slice {at}).")
            continue
        mine: dict[str, Measurement] = {m.kind: m for m in measurements if m.concept == concept}
        parts = len(found.components)
        sentences.append(f"{concept}: {mine['volume'].short} on {_span(found)}"
                         + (f", in {parts} separate parts" if parts > 1 else "") + _extent(mine, parts) + ".")
    if len(searched) < result.shape[0]:
        sentences.append(f"Only {where} of {result.shape[0]} were searched; volumes cover those slices only.")
    if any(not m.spacing_known for m in measurements):
        sentences.append("The voxel size was unknown, so volumes are in voxels, not millilitres.")
    if untrained:
        sentences.append(f"Caution: the segmenter was not trained and validated for {', '.join(untrained)} on "
                         f"{modality or 'this modality'}; these masks are unvalidated, and finding nothing is no "
                         "evidence of absence.")
    return " ".join(sentences)


def _key_masks(result: VolumeResult, key: int) -> list[ConceptMask]:
    """Each concept's components as they cross the key slice (what 2D consumers draw)."""
    out = []
    height, width = result.shape[1:]
    for concept, found in result.concepts.items():
        instances = [Instance.from_mask(found.component_mask(c.label)[key], c.score)
                     for c in found.components if found.component_mask(c.label)[key].any()]
        if instances:
            out.append(ConceptMask(concept=concept, instances=instances, image_size=(height, width)))
    return out


def _progress_event(done: int, total: int, started: float) -> StepEvent:
    return StepEvent(kind="tool_result", node="segment_volume", text=f"slices {done}/{total}",
                     data={"done": done, "total": total}, ms=(time.perf_counter() - started) * 1000)


def stream_volume(agent: Agent, question: str, study: Study, *, slices: str | range | None = None,
                  ) -> Iterator[StepEvent]:
    """Step events of a volume run; the last has kind "answer" and the ``AgentResult`` with the 3D masks.

    A failure yields an "error" event and raises; an ``AgentError`` (the MLLM endpoint) carries the trace
    so far in ``partial`` (status "error", no masks), as a 2D run's does.
    """
    trace: list[StepEvent] = []
    try:
        yield from _volume_events(agent, question, study, slices, trace)
    except Exception as exc:
        event = StepEvent(kind="error", text=f"{type(exc).__name__}: {exc}", node="agent")
        trace.append(event)
        if isinstance(exc, AgentError) and exc.partial is None:
            exc.partial = AgentResult(question=question, answer="", planner=agent.planner.label, concepts_tried=[],
                                      masks=[], image_size=study.shape[1:], overlay=study.slices[0], trace=trace,
                                      status="error", error=str(exc))
        yield event
        raise


def _volume_events(agent: Agent, question: str, study: Study, slices: str | range | None,
                   trace: list[StepEvent]) -> Iterator[StepEvent]:
    run_start = time.perf_counter()

    def emit(event: StepEvent) -> StepEvent:
        trace.append(event)
        return event

    chosen = parse_slices(slices, study.shape[0])  # a bad range is refused before any work
    concepts, how, shown = pick_concepts(agent, question, study, chosen)
    if not concepts:
        raise ValueError("the question names nothing to segment in the volume")
    yield emit(StepEvent(kind="plan", node="plan", text=f"segment {concepts} on {len(chosen)} slice(s) ({how})",
                         data={"concepts": concepts, "slices": [chosen.start, chosen.stop]}, image=shown))
    # this run's handle on the shared segmenter: other runs may set their images in between
    run = VolumeSegmentation(agent.segmenter.handle(), study, concepts, slices=chosen)
    batch = max(1, len(run.chosen) // PROGRESS_EVENTS)
    for done, total in run:
        if done % batch == 0 or done == total:
            yield emit(_progress_event(done, total, run_start))
    result = run.result()
    key = _key_slice(result)
    yield emit(StepEvent(kind="overlay", node="segment_volume", image=montage(study, result, key),
                         text=f"key slice {key} and its neighbours"))
    measurements = _measurements(result, study)
    # the catalog says what MedSAM3-Lite was trained on; other backends (SAM 3) are not described by it
    untrained = unvalidated(concepts, study) if agent.segmenter.backend.name == "medsam3-lite" else []
    answer = answer_text(result, measurements, untrained, study.geometry.modality or "")
    agent_result = AgentResult(
        question=question, answer=answer, planner=agent.planner.label, concepts_tried=concepts,
        masks=_key_masks(result, key), image_size=result.shape[1:], overlay=_slice_overlay(study, result, key),
        trace=trace, measurements=measurements,
        volume=VolumeOutput(study=study, concepts=result.concepts, slices=result.slices, key_slice=key),
    )
    done_event = StepEvent(kind="answer", node="answer", text=answer, image=agent_result.overlay,
                           result=agent_result, ms=(time.perf_counter() - run_start) * 1000)
    agent_result.trace.append(done_event)
    yield done_event
