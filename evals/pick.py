"""Concept-pick accuracy of the offline planner on a reasoning-set JSONL (default: the shipped dev set).

``medsam3-agent eval --mode pick [--questions FILE] --out DIR``: for each question of a reasoning set
(default: the shipped dev set), the concepts the offline planner's picker chooses (reading the image
for ambiguous words, no segmenter) against the row's ``concepts``; prints the accuracy overall and
per category and every miss, and writes DIR/pick.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel


class PickReport(BaseModel):
    total: int
    correct: int
    by_category: dict[str, list[int]]  # category -> [correct, total]
    misses: list[dict]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def evaluate(path: Path) -> PickReport:
    from agent.concepts import default_picker
    from segmenter.study_io import load_image

    picker = default_picker()
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    correct, misses = 0, []
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        image_path = (Path(path).parent / row["image"]).resolve()
        if not image_path.exists():
            raise FileNotFoundError(f"{row['id']}: image {image_path} not found (is ../shared/data there?)")
        pick = picker.pick(row["question"], load_image(image_path))
        ok = sorted(pick.concepts) == sorted(row["concepts"])
        category = row.get("category", "all")
        by_category[category][1] += 1
        if ok:
            correct += 1
            by_category[category][0] += 1
        else:
            misses.append({"id": row["id"], "question": row["question"], "expected": row["concepts"],
                           "picked": pick.concepts, "how": pick.how})
    return PickReport(total=len(rows), correct=correct, by_category=dict(by_category), misses=misses)


def print_report(report: PickReport) -> None:
    print(f"concept-pick accuracy: {report.accuracy:.1%} ({report.correct}/{report.total})")
    for category, (ok, n) in sorted(report.by_category.items()):
        print(f"  {category:10s} {ok}/{n}")
    for miss in report.misses:
        print(f"  MISS {miss['id']}: {miss['question']!r} expected {miss['expected']} picked {miss['picked']} "
              f"({miss['how']})")
