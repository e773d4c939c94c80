"""`medsam3-agent eval --data ../shared/data --split val --mode direct,box,agent --out runs/val`.

Writes OUT/results.jsonl (one record per (mode, case), appended as it goes; a rerun resumes),
OUT/summary.json (flat rows per mode / dataset / concept), OUT/report.md and OUT/dice_*.png.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evals.config import EvalConfig


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    from agent.run_command import add_recording_options
    from segmenter.catalog import REFINES

    parser.add_argument("--data", type=Path, nargs="+", default=[], metavar="PATH",
                        help="data root of <dataset>/manifest.jsonl, a manifest, a reasoning-set .jsonl, "
                             "a ReasonSeg folder or a COCO annotation .json")
    parser.add_argument("--questions", default=None, metavar="FILE",
                        help="reasoning-set JSONL for agent mode; default with a manifest --data: the shipped dev "
                             "set (evals/data/dev_questions.jsonl); 'none': ask templated questions instead")
    parser.add_argument("--split", default="val", help="manifest split to use (train|val), or 'all'")
    parser.add_argument("--mode", default="direct",
                        help="comma-separated: direct, box, agent; or pick alone: the offline planner's "
                             "concept-pick accuracy on --questions (default: the shipped dev set), no segmenter")
    parser.add_argument("--out", type=Path, required=True, help="output folder (reused to resume)")
    parser.add_argument("--limit", type=int, default=None, help="at most N cases per dataset")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes (or Ray actors with --executor ray), each with its own segmenter")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="questions at once per process, in threads sharing its segmenter (for API-bound "
                             "planners; the segmenter runs one prompt at a time)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="local (default): this machine; ray: a pool of --workers actors on a Ray cluster "
                             "(needs the [ray] extra)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --executor ray: the cluster (ray.init's address, e.g. auto or ray://head:10001); "
                             "default: RAY_ADDRESS, else a new local instance")
    parser.add_argument("--datasets", type=_csv, default=None, help="comma-separated dataset names to keep")
    parser.add_argument("--concepts", type=_csv, default=None, help="comma-separated concepts to keep")
    parser.add_argument("--coco-images", type=Path, default=None, help="image folder for a COCO file's file_names")
    parser.add_argument("--backend", default="lite", help="segmenter backend: lite (default), sam3, remote")
    parser.add_argument("--weights", type=Path, default=None, help="MedSAM3-Lite weights (default: shipped)")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="lite: one presence threshold for every concept (default: each concept's own, "
                             "calibrated on val for the weights (presence_thresholds.json beside them), else 0.5)")
    parser.add_argument("--refine", choices=("catalog", *REFINES), default=None,
                        help="lite: how concept masks are drawn; catalog: each concept's own (default, or "
                             "MEDSAM3_REFINE); box: LiteMedSAM's box decoder from each component's box")
    parser.add_argument("--shift", default=None, metavar="NAME",
                        help="simulate another site's images: other-hospital (a per-case colour/gamma/contrast/"
                             "blur/rescale/vignette/JPEG mix, seeded by the case); masks are untouched; 2D only")
    parser.add_argument("--box-strategy", choices=("component", "union"), default="component",
                        help="box mode: one box per target component (default) or one union box")
    parser.add_argument("--box-prompt", choices=("text+box", "box"), default="text+box",
                        help="box mode: the concept with the boxes (default, the paper's T+I) or the boxes alone")
    parser.add_argument("--planner", default=None, help="agent planner (default: the agent's own default)")
    parser.add_argument("--model", default=None, help="the openai planner's model (default: OPENAI_MODEL)")
    parser.add_argument("--base-url", default=None, metavar="URL",
                        help="its OpenAI-compatible endpoint (default: OPENAI_BASE_URL, else OpenAI's)")
    parser.add_argument("--api-key-env", default=None, metavar="VAR",
                        help="the environment variable holding its API key (default: OPENAI_API_KEY); the key "
                             "itself is never an argument and is written nowhere")
    add_recording_options(parser, "agent mode: ")
    parser.add_argument("--max-rounds", type=int, default=None, help="agent refinement rounds")
    parser.add_argument("--slices", default=None, metavar="START:END",
                        help="volumes: segment only these slices (end exclusive), or 'target': the span where the "
                             "labels are (an oracle restriction; the report says so); default: every slice")
    parser.add_argument("--no-hd95", action="store_true", help="skip HD95 (saves a little time)")
    parser.add_argument("--save-masks", action="store_true", help="also write predicted masks to OUT/masks/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="discard OUT/results.jsonl and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _questions(args: argparse.Namespace, modes: list[str]) -> Path | None:
    from evals.runner import default_questions, is_manifest_root

    if args.questions is not None:
        return None if args.questions.lower() == "none" else Path(args.questions)
    if "agent" in modes and any(is_manifest_root(p) for p in args.data):
        path = default_questions()
        if path is not None:
            print(f"agent mode: questions from the dev set {path} (--questions none for templated ones)",
                  file=sys.stderr)
        return path
    return None


# option -> (flag, the default that is left out of the reproduced command)
_REPRODUCED = (
    ("limit", "--limit", None), ("datasets", "--datasets", None), ("concepts", "--concepts", None),
    ("coco_images", "--coco-images", None), ("weights", "--weights", None), ("planner", "--planner", None),
    ("model", "--model", None), ("base_url", "--base-url", None), ("api_key_env", "--api-key-env", None),
    ("record", "--record", None), ("replay", "--replay", None),
    ("max_rounds", "--max-rounds", None), ("backend", "--backend", "lite"),
    ("presence_threshold", "--presence-threshold", 0.5), ("refine", "--refine", None),
    ("shift", "--shift", None), ("box_strategy", "--box-strategy", "component"),
    ("box_prompt", "--box-prompt", "text+box"), ("workers", "--workers", 1), ("concurrency", "--concurrency", 1),
    ("executor", "--executor", "local"), ("address", "--address", None), ("seed", "--seed", 0),
    ("slices", "--slices", None),
)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (for report.md), rebuilt from the parsed options (no secret
    is among them: the API key is named by its variable)."""
    parts = ["medsam3-agent", "eval"]
    if args.data:
        parts += ["--data", *map(str, args.data)]
    if args.questions is not None:
        parts += ["--questions", str(args.questions)]
    parts += ["--split", args.split, "--mode", args.mode, "--out", str(args.out)]
    for name, flag, default in _REPRODUCED:
        value = getattr(args, name)
        if value is not None and value != default:  # None is never given: it is the option's absence
            parts += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _pick(args: argparse.Namespace) -> int:
    from evals.pick import evaluate, print_report
    from evals.runner import default_questions

    questions = Path(args.questions) if args.questions else default_questions()
    if questions is None:
        raise ValueError("--mode pick needs --questions FILE (no dev set is installed)")
    report = evaluate(questions)
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pick.json").write_text(report.model_dump_json(indent=1), encoding="utf-8")
    print(f"-> {args.out / 'pick.json'}")
    return 0


def _config(args: argparse.Namespace, modes: list[str], questions: Path | None) -> EvalConfig:
    from evals.config import EvalConfig

    return EvalConfig(
        data=args.data,
        questions=questions,
        split=None if args.split == "all" else args.split,
        modes=modes,
        out=args.out,
        limit=args.limit,
        workers=args.workers,
        concurrency=args.concurrency,
        executor=args.executor,
        address=args.address,
        datasets=args.datasets,
        concepts=args.concepts,
        image_root=args.coco_images,
        backend=args.backend,
        weights=args.weights,
        presence_threshold=args.presence_threshold,
        refine=args.refine,
        shift=args.shift,
        box_strategy=args.box_strategy,
        box_text=args.box_prompt == "text+box",
        planner=args.planner,
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        record=args.record,
        replay=args.replay,
        max_rounds=args.max_rounds,
        hd95=not args.no_hd95,
        slices=args.slices,
        save_masks=args.save_masks,
        seed=args.seed,
        fresh=args.fresh,
        command=command_line(args),
    )


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from evals.modes import MODES
    from evals.runner import run_eval

    modes = _csv(args.mode)
    if "pick" in modes:
        if modes != ["pick"]:
            raise ValueError("--mode pick runs alone (it needs no segmenter); run the other modes separately")
        return _pick(args)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--mode {args.mode!r}: choose one or more of {', '.join(MODES)}, comma-separated")
    questions = _questions(args, modes)
    if not args.data and questions is None:
        raise ValueError("give --data and/or --questions")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    try:
        config = _config(args, modes, questions)
    except ValidationError as exc:  # one line per problem, in the option's words, not pydantic's report
        raise ValueError("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())) from None
    outcome = run_eval(config, progress=not args.no_progress)
    print(f"{outcome.ran} (mode, case) pairs run, {outcome.skipped} resumed, {outcome.errors} errors -> {outcome.out}")
    # one row per (dataset, concept) and per mode over everything; sens / spec: presence sensitivity over the
    # n+ cases with a target, specificity over the n- cases without one
    rows = [r for r in outcome.summary if (r["dataset"] == "*") == (r["concept"] == "*") and r["n_measured"] is None]
    names = {id(r): r["dataset"] if r["dataset"] == "*" else f"{r['dataset']} / {r['concept']}" for r in rows}
    width = max((len(name) for name in names.values()), default=7)
    print(f"{'mode':7} {'dataset / concept':{width}} {'n':>5} {'dice':>7} {'giou':>7} {'ciou':>7} {'sens':>6} "
          f"{'n+':>4} {'spec':>6} {'n-':>4} {'err':>4}")
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else "    –  " for k in ("dice", "giou", "ciou")]
        sens, spec = (f"{r[k]:.3f}" if r.get(k) is not None else "  –" for k in ("presence_sens", "presence_acc"))
        print(f"{r['mode']:7} {names[id(r)]:{width}} {r['n']:5d} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} "
              f"{sens:>6} {r.get('n_pos', '–'):>4} {spec:>6} {r.get('n_neg', '–'):>4} {r['errors']:4d}")
    for r in outcome.summary:  # measurement rows: the ratio's mean absolute error
        if r["n_measured"] is not None and r["dataset"] != "*":
            mae = f"{r['mae']:.4f}" if r["mae"] is not None else "–"
            print(f"{r['mode']:7} {r['dataset']:{width}} {r['concept']}: MAE {mae} over {r['n_measured']} of {r['n']}")
    return 0
