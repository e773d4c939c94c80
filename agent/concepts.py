"""Question -> catalog concepts, for the offline planner.

1. Names and synonyms from the concept catalog are matched as whole words (longest first;
   "left and right lungs" counts as both lungs). A phrase after "not" / "without" / "except"
   is excluded.
2. Generic words ("the lesion", "a tumor", "anything abnormal") and synonyms shared by several
   concepts are ambiguous: they are resolved from modality words in the question ("skin",
   "ultrasound"), else from the image itself (``agent.modality``), else from which candidate the
   segmenter finds most present, else the closest in meaning.
3. With no catalog phrase at all, the question is compared with every concept's names and
   description by the shipped sentence-embedding model (MiniLM), the image's modality adding
   a small prior.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, Field

from agent.modality import ModalityGuess, guess_modality
from segmenter.catalog import ConceptCatalog, load_catalog

# Words that name "a finding" without saying which: resolved from the image, never guessed.
GENERIC = {
    "lesion", "lesions", "tumor", "tumors", "tumour", "tumours", "mass", "masses", "growth", "growths", "lump",
    "lumps", "nodule", "nodules", "cancer", "cancers", "malignancy", "abnormality", "abnormalities", "anomaly",
    "anomalies", "finding", "findings", "pathology", "abnormal", "suspicious", "neoplasm", "carcinoma",
    "disease", "problem", "wrong",
}
# Words that tell the modality (or organ) without naming a concept.
MODALITY_WORDS = {
    "endoscopy": r"colonoscop\w*|endoscop\w*|colon|colonic|colorectal|bowel|rectum|rectal|intestin\w*|gut|"
                 r"gastro\w*|gi tract",
    "dermoscopy": r"skin|dermoscop\w*|dermatoscop\w*|dermatolog\w*|cutaneous|arm|leg|back|face|neck|shoulder",
    "ultrasound": r"ultrasound|sonogra\w*|sonograph\w*|breast|echo\w*|us scan",
    "fundus": r"fundus|retina\w*|eye|ophthalm\w*|glaucoma",
    "x-ray": r"x-?rays?|radiograph\w*|chest|cxr|thora\w*",
    "histopathology": r"histolog\w*|histopatholog\w*|h&e|slide|microscop\w*|biopsy|stain\w*|tissue section",
    "mri": r"mri|magnetic resonance|brain|flair|cerebr\w*|cranial|intracranial|head scan",
}
NEGATORS = r"(?:not|without|except|excluding|exclude|ignore|ignoring|don't|dont|other than|leave out|skip)"
# Instruction words stripped before embedding what is left of the question.
_FILLER = re.compile(
    r"\b(?:please|can|could|would|you|me|i|my|show|find|segment|outline|highlight|mark|delineate|detect|locate|"
    r"identify|draw|trace|where|what|which|is|are|there|any|the|a|an|this|these|in|on|of|image|picture|photo|"
    r"scan|view|region|area|areas|regions|do|does|see|see|visible|it|its|for|to|and|or|all|every|each|some)\b"
)
EMBED_MIN = 0.35  # below this the question names nothing: treat it as generic


class ConceptPick(BaseModel):
    concepts: list[str]
    how: dict[str, str] = Field(default_factory=dict)  # concept -> how it was chosen (for the answer / trace)
    phrases: dict[str, str] = Field(default_factory=dict)  # concept -> the words of the question it came from
    excluded: list[str] = Field(default_factory=list)
    modality: ModalityGuess | None = None
    ambiguous: bool = False


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9&'\- ]+", " ", text.lower())).strip()


@lru_cache(maxsize=1)
def _phrase_table() -> list[tuple[str, tuple[str, ...]]]:
    """(phrase, concepts it names), longest phrase first."""
    table: dict[str, set[str]] = {}
    for concept in load_catalog().concepts:
        for phrase in [concept.name, *concept.synonyms]:
            table.setdefault(_words(phrase), set()).add(concept.name)
    return sorted(((p, tuple(sorted(c))) for p, c in table.items() if p), key=lambda x: -len(x[0]))


def _finding_concepts(catalog: ConceptCatalog) -> list[str]:
    """Concepts that generic words can mean: those whose synonyms use a generic word."""
    out = []
    for concept in catalog.concepts:
        tokens = {t for s in [concept.name, *concept.synonyms] for t in _words(s).split()}
        if tokens & (GENERIC - {"disease", "problem", "wrong", "abnormal", "suspicious"}):
            out.append(concept.name)
    return out


def _plural(phrase: str) -> str:
    escaped = re.escape(phrase)
    if phrase.endswith(("s", "x")):
        return escaped
    if phrase.endswith("us"):  # nucleus -> nuclei
        return escaped
    return escaped + r"(?:e?s)?"


def _matches(text: str) -> list[tuple[int, int, str, tuple[str, ...]]]:
    """Non-overlapping catalog phrase matches: (start, end, phrase, concepts), longest first."""
    taken = np.zeros(len(text) + 1, dtype=bool)
    found = []
    for phrase, concepts in _phrase_table():
        for m in re.finditer(rf"(?<!\w){_plural(phrase)}(?!\w)", text):
            if taken[m.start():m.end()].any():
                continue
            taken[m.start():m.end()] = True
            found.append((m.start(), m.end(), phrase, concepts))
    return sorted(found)


def _generic_matches(text: str, taken: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    out = []
    for m in re.finditer(r"[a-z]+", text):
        if m.group() in GENERIC and not any(s <= m.start() < e for s, e in taken):
            out.append((m.start(), m.end(), m.group()))
    return out


def _negated(text: str, start: int) -> bool:
    before = text[max(0, start - 40):start]
    clause = re.split(r"[,.;:!?]| but | and | or ", before)[-1]  # only this clause's words count
    return re.search(rf"\b{NEGATORS}\b(?:\s+\w+){{0,3}}\s*$", clause) is not None


def text_modalities(text: str) -> list[str]:
    return [m for m, pattern in MODALITY_WORDS.items() if re.search(rf"\b(?:{pattern})\b", text)]


def _expand(text: str) -> str:
    # "left and right lungs" / "right and left lung" name two concepts
    return re.sub(r"\b(left|right) and (left|right) (lungs?|lung fields?)\b", r"\1 \3 and \2 \3", text)


class ConceptPicker:
    """Picks catalog concepts for a question; ``image`` and ``presence`` resolve ambiguous words."""

    def __init__(self, catalog: ConceptCatalog | None = None, embedder=None) -> None:
        self.catalog = catalog or load_catalog()
        self._embedder = embedder
        self.findings = _finding_concepts(self.catalog)
        self.modality_of = {c.name: c.modality for c in self.catalog.concepts}

    @property
    def embedder(self):
        if self._embedder is None:
            from segmenter.text import shared_embedder

            self._embedder = shared_embedder()
        return self._embedder

    def pick(self, question: str, image: np.ndarray | None = None,
             presence: Callable[[str], float] | None = None, *, fallback: bool = True) -> ConceptPick:
        text = _expand(_words(question))
        guess = guess_modality(image) if image is not None else None
        matches = _matches(text)
        generic = _generic_matches(text, [(s, e) for s, e, _, _ in matches])
        pick = ConceptPick(concepts=[], modality=guess)
        cues = text_modalities(text)
        for start, _, phrase, concepts in matches:
            ambiguous = len(concepts) > 1 or phrase in GENERIC
            if ambiguous:
                # a generic word can mean any finding; a shared synonym means one of the concepts sharing it
                options = sorted(set(concepts) | set(self.findings)) if phrase in GENERIC else list(concepts)
                chosen, how = self._resolve(options, text, cues, guess, presence)
                pick.ambiguous = True
            else:
                chosen, how = concepts[0], "named"
            self._add(pick, chosen, how, phrase, _negated(text, start))
        if not pick.concepts and not pick.excluded and generic:
            start, _, word = generic[0]
            chosen, how = self._resolve(self.findings, text, cues, guess, presence)
            pick.ambiguous = True
            self._add(pick, chosen, how, word, _negated(text, start))
        if not pick.concepts and not pick.excluded and fallback:
            chosen, how = self._by_meaning(text, cues, guess, presence)
            self._add(pick, chosen, how, text, False)
        return pick

    @staticmethod
    def _add(pick: ConceptPick, concept: str, how: str, phrase: str, negated: bool) -> None:
        if negated:
            if concept not in pick.excluded:
                pick.excluded.append(concept)
            return
        if concept not in pick.concepts:
            pick.concepts.append(concept)
            pick.how[concept] = how
            pick.phrases[concept] = phrase

    def _resolve(self, options: list[str], text: str, cues: list[str], guess: ModalityGuess | None,
                 presence: Callable[[str], float] | None) -> tuple[str, str]:
        """One of ``options`` for an ambiguous word, from the question's modality words, then the image."""
        by_text = [c for c in options if self.modality_of[c] in cues]
        if len(by_text) == 1:
            return by_text[0], f"the question mentions {self.modality_of[by_text[0]]}"
        options = by_text or options
        if guess is not None:
            by_image = [c for c in options if self.modality_of[c] == guess.modality]
            if len(by_image) == 1:
                return by_image[0], f"the image looks like {guess.modality} ({guess.confidence:.0%})"
            if by_image:
                options = by_image
            elif guess.confidence >= 0.5:
                # nothing of this kind occurs in this modality: keep the closest meaning; the segmenter decides
                best = self._closest(text, options)
                return best, f"no such finding is expected in {guess.modality}; closest in meaning"
        if presence is not None and len(options) > 1:
            scores = {c: presence(c) for c in options}
            best = max(scores, key=scores.__getitem__)
            return best, f"most present in the image (presence {scores[best]:.2f})"
        return self._closest(text, options), "closest in meaning"

    def _closest(self, text: str, options: list[str]) -> str:
        scores = self._meaning_scores(text)
        return max(options, key=lambda c: scores[c])

    @lru_cache(maxsize=1)  # noqa: B019  (one picker per process; the catalog does not change)
    def _concept_vectors(self) -> tuple[list[str], list[np.ndarray]]:
        names, vectors = [], []
        for concept in self.catalog.concepts:
            phrases = [concept.name, *concept.synonyms, concept.description]
            names.append(concept.name)
            vectors.append(self.embedder.embed(phrases))
        return names, vectors

    def _meaning_scores(self, text: str) -> dict[str, float]:
        core = re.sub(r"\s+", " ", _FILLER.sub(" ", text)).strip() or text
        query = self.embedder.embed([core, text])
        names, vectors = self._concept_vectors()
        return {n: float((vec @ query.T).max()) for n, vec in zip(names, vectors, strict=True)}

    def _by_meaning(self, text: str, cues: list[str], guess: ModalityGuess | None,
                    presence: Callable[[str], float] | None) -> tuple[str, str]:
        scores = self._meaning_scores(text)
        prior = {c: 0.0 for c in scores}
        if guess is not None:
            prior = {c: 0.1 * guess.probabilities.get(self.modality_of[c], 0.0) for c in scores}
        for c in scores:
            if self.modality_of[c] in cues:
                prior[c] += 0.1
        total = {c: scores[c] + prior[c] for c in scores}
        best = max(total, key=total.__getitem__)
        if scores[best] >= EMBED_MIN:
            return best, f"closest in meaning ({scores[best]:.2f})"
        # the question names nothing we know: the image's usual target
        options = self.findings
        if guess is not None and not any(self.modality_of[c] == guess.modality for c in options):
            options = [c for c in self.catalog.names if self.modality_of[c] == guess.modality] or options
            return options[0], f"the question names no target; the main structure of {guess.modality}"
        return self._resolve(options, text, cues, guess, presence)


@lru_cache(maxsize=1)
def default_picker() -> ConceptPicker:
    return ConceptPicker()

