"""Threads survive the process: a SQLite checkpoint (state + masks + the image) resumed by a new process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import val_rows

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from agent_helpers import OracleBackend
    from agent import Agent
    from segmenter import Segmenter
    from segmenter.study_io import load_image

    case = json.loads({case!r})
    agent = Agent(planner="offline", segmenter=Segmenter(OracleBackend({{case["image"]: case["masks"]}})),
                  checkpoint_db={db!r})
    # turn 1 passes the image as an array (it must be kept in the checkpoint); later turns pass none
    image = load_image(case["image"]) if {with_image!r} else None
    result = agent.run({question!r}, image=image, thread_id="eye")
    print(json.dumps({{"answer": result.answer,
                      "masks": {{m.concept: [int(m.mask.sum()), [int(v) for v in m.mask.nonzero()[0][:50]]]
                                for m in result.masks}}}}))
    """
)


def run_turn(db: Path, case: dict, question: str, with_image: bool) -> dict:
    code = SCRIPT.format(tests=str(TESTS), case=json.dumps(case), db=str(db), question=question,
                         with_image=with_image)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False,
                          cwd=TESTS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_thread_resumes_from_sqlite_in_a_new_process(tmp_path):
    row = val_rows("drishti_gs1", limit=1)[0]
    case = {"image": str(row["image"]), "masks": {c: str(p) for c, p in row["masks"].items()}}
    db = tmp_path / "threads.sqlite"
    first = run_turn(db, case, "Outline the optic disc and the cup.", with_image=True)
    assert sorted(first["masks"]) == ["optic cup", "optic disc"]
    second = run_turn(db, case, "now only the cup", with_image=False)  # a new process, no image given
    assert list(second["masks"]) == ["optic cup"]
    assert second["masks"]["optic cup"] == first["masks"]["optic cup"]  # the same pixels came back
    assert second["answer"].startswith("From the previous answer")
    third = run_turn(db, case, "also the optic disc", with_image=False)
    assert sorted(third["masks"]) == ["optic cup", "optic disc"]

    # the checkpoints hold ids and text; masks (RLE) and the image live in their own tables
    with sqlite3.connect(db) as conn:
        largest_checkpoint = conn.execute("SELECT max(length(checkpoint)) FROM checkpoints").fetchone()[0]
        n_masks = conn.execute("SELECT count(*) FROM agent_masks WHERE thread_id = 'eye'").fetchone()[0]
        n_images = conn.execute("SELECT count(*) FROM agent_images").fetchone()[0]
    assert largest_checkpoint < 64_000
    assert n_masks >= 4 and n_images == 1
