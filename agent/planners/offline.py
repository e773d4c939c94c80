"""The offline planner: no LLM. Concept catalog + sentence embeddings + the image's own statistics.

plan     question -> concepts (``agent.concepts``); follow-ups ("now only the largest one", "also
         the cup", "without the cup") work on the previous answer's masks. An ambiguous word the
         image's modality cannot settle is settled by presence probes (tool calls like any other).
inspect  without vision: presence scores, instance scores, dropping specks, low scorers,
         duplicates and extra copies of one-per-image structures; a concept named for a modality
         the image is clearly not (polyps on a fundus photo) must be very present to count. Then
         another round: re-segment each kept instance with its own box (a tighter mask; not one the
         segmenter already redrew from its box), or retry a synonym when the presence score was
         borderline; then inspect again.
measure  a question asking for a size, count or ratio ("how big", "how many", "is the heart enlarged?",
         "cup-to-disc ratio") also segments what the measurement needs (lungs + cardiomediastinum, optic
         disc + cup) and ends with a ``measure`` call on the selection, whose numbers the answer states.
answer   a templated sentence per concept, saying which planner wrote it.

What it carries from step to step is ``OfflineMemory``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from agent.concepts import ConceptPick, ConceptPicker, default_picker
from agent.errors import PlannerError
from agent.measure_intent import MeasureIntent, measure_intent
from agent.planners.base import Planner, PlannerView
from agent.state import Decision
from segmenter.catalog import load_catalog
from segmenter.postprocess import SPECK_OF_LARGEST, is_speck
from tools.measure import Measurement, spacing_note
from tools.schemas import Candidate, ToolCall
from tools.segment import masks_iou

# Anatomy: how many of each structure one image can show. More candidates than this are noise.
EXPECTED_MAX = {"optic disc": 1, "optic cup": 1, "left lung": 1, "right lung": 1, "lung": 2,
                "cardiomediastinum": 1}
MANY = {"cell nucleus"}  # hundreds per image: no per-instance box refinement
MAX_BOX_REFINE = 5
SIGNATURE = "[offline planner: concept catalog + sentence embeddings, no LLM]"


class PickNotes(BaseModel):
    """What the concept picker made of the question (the answer explains readings that were not named)."""

    how: dict[str, str] = Field(default_factory=dict)  # concept -> how it was chosen
    phrases: dict[str, str] = Field(default_factory=dict)  # concept -> the question's words it came from
    modality: str | None = None  # the image's modality, as guessed from its pixels
    modality_confidence: float = 0.0  # rounded to 3 places


class OfflineMemory(BaseModel):
    """The offline planner's notes, from plan through inspect to the answer."""

    probed: dict[str, float] = Field(default_factory=dict)  # plan: presence probes so far, concept -> presence
    pick: PickNotes = Field(default_factory=PickNotes)
    op: str | None = None  # a selection in the question: largest / smallest / best / number
    number: int | None = None  # for op "number"
    targets: list[str] = Field(default_factory=list)  # the concepts to segment
    keep: list[int] = Field(default_factory=list)  # previous-answer ids an "also ..." question keeps
    followup: str | None = None  # how a follow-up worked on the previous answer, when it did
    stage: Literal["first", "boxes", "measure"] = "first"  # judge the first masks, the box-refined ones, or
    # read the measure call on the selection (``final``)
    measure: MeasureIntent | None = None  # the measurement the question asks for
    final: list[int] = Field(default_factory=list)  # the selection being measured
    measure_error: str | None = None  # why the measure call failed, for the answer
    retried: list[str] = Field(default_factory=list)  # concepts already retried with a synonym
    kept: list[int] = Field(default_factory=list)  # the ids kept before box refinement
    dropped: dict[str, str] = Field(default_factory=dict)  # id -> why it was dropped
    presence: dict[str, float] = Field(default_factory=dict)  # concept -> presence (max over its phrases)


def parse_op(question: str) -> tuple[str | None, int | None]:
    """A selection operation in the question: largest / smallest / most confident, or "number N"."""
    q = question.lower()
    number = re.search(r"(?:#|\bnumber\s+|\bmask\s+|\bno\.\s*)(\d+)\b", q)
    if number:
        return "number", int(number.group(1))
    if re.search(r"\b(largest|biggest|largest one|main)\b", q):
        return "largest", None
    if re.search(r"\b(smallest|tiniest)\b", q):
        return "smallest", None
    if re.search(r"\b(most confident|highest score|best one|most likely|most certain)\b", q):
        return "best", None
    return None, None


def _with_needs(concepts: list[str], intent: MeasureIntent | None) -> list[str]:
    """The question's concepts plus those its measurement needs ("lung" is there when either lung is)."""
    out = list(concepts)
    for need in intent.needs if intent else []:
        if not any(c == need or c.endswith(f" {need}") for c in out):
            out.append(need)
    return out


def _expand_box(box: list[float], width: int, height: int, margin: float = 0.1) -> list[float]:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return [max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(width), x1 + dx), min(float(height), y1 + dy)]


class OfflinePlanner(Planner):
    name = "offline"

    def __init__(
        self,
        *,
        picker: ConceptPicker | None = None,
        box_refine: Literal["geometry", "concept", "off"] = "geometry",
        relative_score: float = 0.5,
        speck_fraction: float = SPECK_OF_LARGEST,
        duplicate_iou: float = 0.7,
        modality_veto: float = 0.9,
        veto_presence: float = 0.8,
        retry_presence: float = 0.35,
        use_presence_to_resolve: bool = True,
    ) -> None:
        self._picker = picker
        self.box_refine = box_refine
        self.relative_score = relative_score  # drop instances scoring under this fraction of the concept's best
        self.speck_fraction = speck_fraction  # ... or a speck: under this fraction of its largest (is_speck)
        self.duplicate_iou = duplicate_iou
        self.modality_veto = modality_veto  # image-modality confidence above which a foreign concept is doubted
        self.veto_presence = veto_presence  # ... and must be at least this present to count
        self.retry_presence = retry_presence  # nothing found although presence >= this: try a synonym once
        self.use_presence_to_resolve = use_presence_to_resolve
        self.catalog = load_catalog()

    @property
    def picker(self) -> ConceptPicker:
        return self._picker or default_picker()

    @property
    def label(self) -> str:
        return "offline"

    # --- plan -----------------------------------------------------------------------------------
    def plan(self, view: PlannerView) -> Decision:
        """Pick the concepts and segment them. Where the picker needs presence scores it has not got,
        this step asks for presence probes first (run by the tools node) and plans again with them."""
        memory = view.memory(OfflineMemory)
        if memory.stage == "measure":  # back from measuring a follow-up's masks
            return self._measured(view, memory)
        probed = {**memory.probed, **self._probe_results(view)}
        asked: list[str] = []
        decision = self._plan(view, self._presence_lookup(probed, asked) if self.use_presence_to_resolve else None)
        if not asked:
            return decision
        concepts = list(dict.fromkeys(asked))
        calls = [ToolCall(name="segment_concept", arguments={"concept": c}, probe=True) for c in concepts]
        return Decision(calls=calls, memory=OfflineMemory(probed=probed),
                        note=f"presence probes for {concepts}: the question's words could mean either")

    @staticmethod
    def _probe_results(view: PlannerView) -> dict[str, float]:
        found = {}
        for result in view.results:
            if not result.call.probe:
                continue
            concept = str(result.call.arguments.get("concept"))
            if not result.ok or result.presence is None:
                raise PlannerError(f"the presence probe for {concept!r} failed: {result.error}")
            found[concept] = result.presence
        return found

    @staticmethod
    def _presence_lookup(probed: dict[str, float], asked: list[str]) -> Callable[[str], float]:
        """Presence from the probes run so far; a concept not probed yet is noted in ``asked`` (and reads 0:
        the step is planned again once it is probed, so that value is never used)."""
        def presence(concept: str) -> float:
            if concept in probed:
                return probed[concept]
            asked.append(concept)
            return 0.0

        return presence

    def _plan(self, view: PlannerView, presence: Callable[[str], float] | None) -> Decision:
        question = view.question
        op, number = parse_op(question)
        prev = view.previous
        prev_cands = view.previous_candidates()
        pick = self.picker.pick(question, view.image, presence, fallback=prev is None)
        also = bool(re.search(r"\b(also|too|as well|add|additionally|plus|in addition)\b|^\s*and\b", question.lower()))
        intent = measure_intent(question)
        memory = OfflineMemory(pick=self._notes(pick), op=op, number=number, measure=intent,
                               targets=_with_needs(pick.concepts, intent))
        if prev is not None:
            prev_concepts = {c.concept for c in prev_cands}
            if intent is not None and not intent.needs and not pick.concepts and prev_cands:
                memory.followup = "measure"  # "how big is it?": measure the previous answer's masks
                return self._finish(memory, [c.id for c in prev_cands], "follow-up on the previous answer")
            if not pick.concepts and not pick.excluded and op is None:
                # nothing we recognise as a follow-up: read it as a new question
                pick = self.picker.pick(question, view.image, presence, fallback=True)
                memory.pick, memory.targets = self._notes(pick), pick.concepts
            elif not pick.concepts or (set(pick.concepts) <= prev_concepts and not also):
                ids = [c.id for c in prev_cands if c.concept not in pick.excluded
                       and (not pick.concepts or c.concept in pick.concepts)]
                ids = self._apply_op(view, ids, op, number)
                what = f"{op}{' ' + str(number) if number else ''}" if op else "filter"
                memory.followup = what
                return self._finish(memory, ids, f"follow-up on the previous answer ({what}): keep {ids}")
            if also:
                memory.keep = [c.id for c in prev_cands if c.concept not in pick.excluded]
                memory.targets = [c for c in _with_needs(pick.concepts, intent) if c not in prev_concepts]
        if not memory.targets:
            return Decision(finish=True, ids=memory.keep, memory=memory, note="nothing to segment")
        calls = [ToolCall(name="segment_concept", arguments={"concept": c}, credited_concept=c) for c in memory.targets]
        how = "; ".join(f"{c}: {pick.how.get(c, 'named')}" for c in memory.targets)
        return Decision(calls=calls, memory=memory, note=f"concepts {memory.targets} ({how})")

    @staticmethod
    def _notes(pick: ConceptPick) -> PickNotes:
        notes = PickNotes(how=pick.how, phrases=pick.phrases)
        if pick.modality is not None:
            notes.modality, notes.modality_confidence = pick.modality.modality, round(pick.modality.confidence, 3)
        return notes

    # --- inspect --------------------------------------------------------------------------------
    def inspect(self, view: PlannerView) -> Decision:
        memory = view.memory(OfflineMemory)
        if memory.stage == "measure":
            return self._measured(view, memory)
        cands = view.candidates()
        presence = self._concept_presence(view, memory)
        if memory.stage == "first":
            retries = self._synonym_retries(view, memory, cands, presence)
            if retries:
                retried = memory.retried + [str(c.credited_concept) for c in retries]
                memory = memory.model_copy(update={"presence": presence, "retried": retried})
                return Decision(calls=retries, memory=memory,
                                note="nothing found although the concept may be present: retry with "
                                     f"{[c.arguments['concept'] for c in retries]}")
        kept, dropped = self._clean(view, memory, cands, presence)
        # box refinement is another segment round: only while the round limit allows one (else finish, and measure)
        if memory.stage == "first" and self.box_refine != "off" and view.round <= view.state.max_rounds:
            calls = self._box_calls(view, kept)
            if calls:
                update = {"stage": "boxes", "kept": [c.id for c in kept], "presence": presence, "dropped": dropped}
                boxed = [p for call in calls for p in call.parents or []]
                drawn = [c.id for c in kept if c.refine == "box" and c.id not in boxed]
                return Decision(calls=calls, memory=memory.model_copy(update=update),
                                note=f"kept {[c.id for c in kept]}; re-segment {boxed}, each with its own box"
                                     + (f" ({drawn} already redrawn from their boxes)" if drawn else ""))
        if memory.stage == "boxes":
            kept = self._swap_refined(view, cands, [c for c in cands if c.id in memory.kept])
            dropped = memory.dropped
        ids = self._apply_op(view, [c.id for c in kept], memory.op, memory.number)
        ids = memory.keep + [i for i in ids if i not in memory.keep]
        memory = memory.model_copy(update={"presence": presence, "dropped": dropped})
        note = f"keep {ids}" + (f"; dropped {dropped}" if dropped else "")
        drawn = [c.id for c in kept if c.refine == "box" and c.parent is None]
        if memory.stage == "first" and drawn and self.box_refine == "geometry":
            note += f"; {drawn} already redrawn from their boxes by the segmenter: no box round"
        return self._finish(memory, ids, note)

    @staticmethod
    def _finish(memory: OfflineMemory, ids: list[int], note: str) -> Decision:
        """Finish with ``ids``; first measure them when the question asks for a measurement."""
        if memory.measure is None or not ids:
            return Decision(finish=True, ids=ids, memory=memory, note=note)
        args: dict[str, Any] = {"ids": ids}
        if memory.measure.what is not None:
            args["what"] = memory.measure.what
        memory = memory.model_copy(update={"stage": "measure", "final": ids})
        return Decision(calls=[ToolCall(name="measure", arguments=args)], memory=memory, note=f"{note}; measure them")

    @staticmethod
    def _measured(view: PlannerView, memory: OfflineMemory) -> Decision:
        """Back from the measure call: finish with the measured selection (its numbers are in the state)."""
        failed = next((r for r in view.results if r.call.name == "measure" and not r.ok), None)
        if failed is not None:
            memory = memory.model_copy(update={"measure_error": failed.error})
        return Decision(finish=True, ids=memory.final, memory=memory,
                        note=f"keep {memory.final}" + (f"; not measured: {failed.error}" if failed else ""))

    def fallback(self, view: PlannerView) -> Decision:
        memory = view.memory(OfflineMemory)
        kept, _ = self._clean(view, memory, view.candidates(), self._concept_presence(view, memory))
        ids = memory.keep + [c.id for c in kept]
        return Decision(finish=True, ids=ids, note="round limit reached: keeping the cleaned candidates")

    def _concept_presence(self, view: PlannerView, memory: OfflineMemory) -> dict[str, float]:
        """Max presence per target concept over the phrases tried for it (box prompts excluded)."""
        presence = dict(memory.presence)
        by_prompt = view.state.presence
        for concept in memory.targets:
            phrases = [concept, *self._synonyms(concept)]
            values = [v for p, v in by_prompt.items() if p.strip("'") in phrases]
            if values:
                presence[concept] = max(values + [presence.get(concept, 0.0)])
        return presence

    def _synonyms(self, concept: str) -> list[str]:
        found = self.catalog.get(concept)
        return [s for s in (found.synonyms if found else []) if s.lower() != concept.lower()]

    def _retry_phrase(self, concept: str) -> str | None:
        """The first synonym sharing no word with the name ("glioma" for "brain tumor"): a spelling
        variant ("brain tumour") would embed to nearly the same prompt and fail the same way."""
        name_words = set(concept.lower().split())
        for synonym in self._synonyms(concept):
            if not name_words & set(synonym.lower().split()):
                return synonym
        return None

    def _synonym_retries(self, view: PlannerView, memory: OfflineMemory, cands: list[Candidate],
                         presence: dict[str, float]) -> list[ToolCall]:
        """Nothing found although the concept seems present (or borderline): one more try with another name."""
        calls = []
        for concept in memory.targets:
            if concept in memory.retried or any(c.concept == concept for c in cands):
                continue
            phrase = self._retry_phrase(concept)
            if presence.get(concept, 0.0) >= self.retry_presence and phrase is not None \
                    and phrase not in view.state.concepts_tried and not self._foreign(memory, concept):
                calls.append(ToolCall(name="segment_concept", arguments={"concept": phrase}, credited_concept=concept))
        return calls

    def _foreign(self, memory: OfflineMemory, concept: str) -> str | None:
        """The image's modality when it is confidently not the concept's (polyps asked of a fundus photo)."""
        modality = memory.pick.modality
        found = self.catalog.get(concept)
        if not modality or found is None or memory.pick.modality_confidence < self.modality_veto:
            return None
        return modality if modality != found.modality else None

    def _clean(self, view: PlannerView, memory: OfflineMemory, cands: list[Candidate],
               presence: dict[str, float]) -> tuple[list[Candidate], dict[str, str]]:
        """Keep the believable instances of each target; say why the others were dropped."""
        kept: list[Candidate] = []
        dropped: dict[str, str] = {}
        first = [c for c in cands if c.parent is None]
        for concept in memory.targets:
            mine = sorted((c for c in first if c.concept == concept), key=lambda c: (-c.score, -c.area))
            if not mine:
                continue
            foreign = self._foreign(memory, concept)
            if foreign and presence.get(concept, 0.0) < self.veto_presence:
                for c in mine:
                    dropped[str(c.id)] = (f"{concept} is not expected in {foreign} "
                                          f"(presence {presence.get(concept, 0):.2f})")
                continue
            best, largest = mine[0].score, max(c.area for c in mine)
            survivors: list[Candidate] = []
            for c in mine:
                if c.score < self.relative_score * best:
                    dropped[str(c.id)] = f"score {c.score:.2f} far below the best {best:.2f}"
                elif is_speck(c.area, largest, view.image_area, self.speck_fraction):
                    dropped[str(c.id)] = f"a speck ({c.area} px)"
                elif any(masks_iou(view.mask(c.id), view.mask(s.id)) > self.duplicate_iou for s in survivors):
                    dropped[str(c.id)] = "a duplicate"
                elif len(survivors) >= EXPECTED_MAX.get(concept, 10**6):
                    dropped[str(c.id)] = f"one image shows at most {EXPECTED_MAX[concept]} {concept}"
                else:
                    survivors.append(c)
            kept += survivors
        return kept, dropped

    def _box_calls(self, view: PlannerView, kept: list[Candidate]) -> list[ToolCall]:
        """One box prompt per kept candidate (the first ``MAX_BOX_REFINE`` of a concept). In ``geometry`` mode
        not for a mask the segmenter already redrew from its own box (``Candidate.refine`` "box", e.g.
        MedSAM3-Lite's refined concepts): the same box decoder would draw it again, for a whole segment round."""
        h, w = view.image.shape[:2]
        calls = []
        for concept in dict.fromkeys(c.concept for c in kept):
            if concept in MANY:
                continue
            mine = [c for c in kept if c.concept == concept][:MAX_BOX_REFINE]
            for c in mine:
                if self.box_refine == "geometry" and c.refine == "box":
                    continue
                args: dict[str, Any] = {"boxes": [_expand_box(c.box, w, h)]}
                if self.box_refine == "concept":
                    args["concept"] = concept
                calls.append(ToolCall(name="segment_geometry", arguments=args, credited_concept=concept,
                                      parents=[c.id]))
        return calls

    def _swap_refined(self, view: PlannerView, cands: list[Candidate], kept: list[Candidate]) -> list[Candidate]:
        """Use each box-refined mask where it is the same object with a tighter edge: it agrees with the
        mask it came from (IoU >= 0.7, area within 0.7-1.25x) and has not grown into another kept concept
        (a box around the optic cup also holds the disc)."""
        refined = {c.parent: c for c in cands if c.parent is not None}
        out = []
        for c in kept:
            r = refined.get(c.id)
            others = [o for o in kept if o.concept != c.concept]
            if (r is not None and masks_iou(view.mask(r.id), view.mask(c.id)) >= 0.7
                    and 0.7 <= r.area / max(c.area, 1) <= 1.25
                    and not any(masks_iou(view.mask(r.id), view.mask(o.id)) > 0.5 for o in others)):
                out.append(r.model_copy(update={"score": c.score}))  # the concept score stays the evidence
            else:
                out.append(c)
        return out

    def _apply_op(self, view: PlannerView, ids: list[int], op: str | None, number: int | None) -> list[int]:
        cands = view.by_id(ids)
        if not cands or op is None:
            return ids
        if op == "number":
            return [cands[number - 1].id] if number and 1 <= number <= len(cands) else ids
        key = {"largest": lambda c: c.area, "smallest": lambda c: -c.area, "best": lambda c: c.score}[op]
        out = []
        for concept in dict.fromkeys(c.concept for c in cands):
            out.append(max((c for c in cands if c.concept == concept), key=key).id)
        return out

    # --- answer -----------------------------------------------------------------------------------
    def answer(self, view: PlannerView, decision: Decision) -> str:
        memory = view.memory(OfflineMemory)
        chosen = view.by_id(decision.ids)
        presence = memory.presence or self._concept_presence(view, memory)
        concepts = list(dict.fromkeys([*(c.concept for c in chosen), *memory.targets]))
        sentences, found_any = [], False
        area = view.image_area
        for concept in concepts:
            mine = [c for c in chosen if c.concept == concept]
            if mine:
                found_any = True
                union = np.zeros(view.image.shape[:2], dtype=bool)
                for c in mine:
                    union |= view.mask(c.id)
                scores = ", ".join(f"{c.score:.2f}" for c in mine[:5]) + (", ..." if len(mine) > 5 else "")
                noun = concept if len(mine) == 1 else f"{concept} instances"
                sentences.append(f"Found {len(mine)} {noun} (score {scores}), covering "
                                 f"{100 * union.sum() / area:.1f}% of the image.")
            else:
                sentences.append(self._not_found(memory, concept, presence.get(concept)))
        if not concepts:
            sentences.append("The question names nothing I can segment.")
        if not found_any:
            sentences.insert(0, "Nothing was found.")
        sentences += self._measure_sentences(view, memory, decision.ids)
        for concept, how in memory.pick.how.items():
            if how != "named" and concept in concepts:
                sentences.append(f"'{memory.pick.phrases.get(concept, concept)}' was read as {concept}: {how}.")
        if memory.followup:
            sentences.insert(0, f"From the previous answer ({memory.followup}):")
        return " ".join(sentences) + " " + SIGNATURE

    @staticmethod
    def _measure_sentences(view: PlannerView, memory: OfflineMemory, ids: list[int]) -> list[str]:
        """The measurements of the answer's masks, units stated; a ratio with its usual threshold."""
        if memory.measure is None or not ids:
            return []
        if memory.measure_error:
            return [f"Could not measure: {memory.measure_error}."]
        chosen = view.by_id(ids)
        found: list[Measurement] = [m for m in view.state.measurements if m.ids and set(m.ids) <= set(ids)]
        out = [m.sentence for m in found if m.unit == "ratio"]
        if memory.measure.what == "count":
            out += [f"Count: {m.text}." for m in found if m.kind == "count"]
        # sizes per instance, numbered as the answer's overlay numbers them (concept by concept)
        order = [c for concept in dict.fromkeys(c.concept for c in chosen) for c in chosen if c.concept == concept]
        sizes = []
        for n, cand in enumerate(order, start=1):
            mine = [m.short for m in found if m.ids == [cand.id] and m.kind != "count"]
            if mine:
                sizes.append(f"{cand.concept} {n}: {', '.join(mine)}")
        if sizes:
            out.append("Sizes (numbered as on the overlay): " + "; ".join(sizes) + ".")
        note = spacing_note(found)
        return out + ([note] if note else [])

    def _not_found(self, memory: OfflineMemory, concept: str, presence: float | None) -> str:
        foreign = self._foreign(memory, concept)
        why = f"; the image looks like {foreign}, where a {concept} is not expected" if foreign else ""
        if presence is not None and presence >= 0.5 and not foreign:
            return f"No {concept} could be segmented, although its presence score is {presence:.2f}."
        return f"No {concept} was found" + (f" (presence {presence:.2f}{why})." if presence is not None else f"{why}.")
