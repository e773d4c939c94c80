"""`medsam3-agent run IMAGE "question" --out DIR`: answer a question with masks, write the files.

IMAGE may be a photo, a DICOM file, a DICOM series folder or zip, or a NIfTI volume, all read by
``load_study``; a volume is answered per volume. DICOM and NIfTI input, a volume or one slice, also get a
NIfTI mask per concept (masks/<concept>_3d.nii.gz) and, for DICOM, a DICOM SEG (segmentation.dcm).

Exit 0 with an answer (which may be "Nothing was found" when the planner said so); exit 2 with one
line on stderr when the run failed (bad input, endpoint down, unusable MLLM replies). A run that
failed after it started still writes DIR/result.json with "status": "error" and its trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (png, jpg, DICOM), DICOM series folder or zip, or NIfTI (.nii, "
                                      ".nii.gz); '-' with --thread-id reuses the thread's image")
    parser.add_argument("question", help='e.g. "find the polyps"')
    parser.add_argument("--out", type=Path, required=True, help="folder for overlay.png, masks/ and result.json")
    parser.add_argument("--planner", choices=["auto", "offline", "openai", "replay"], default="auto",
                        help="auto (default): openai when a base URL or a model is given (flag or OPENAI_BASE_URL / "
                             "OPENAI_MODEL), else offline; replay: answer from --replay DIR without a network")
    add_recording_options(parser)
    parser.add_argument("--segmenter", default="lite", help="segmenter backend: lite (default), sam3 or remote")
    parser.add_argument("--model", default=None, help="MLLM model name (else OPENAI_MODEL)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint (else OPENAI_BASE_URL); the "
                                                        "API key is read from OPENAI_API_KEY")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per MLLM request (default 60)")
    parser.add_argument("--thread-id", default=None, help="continue this conversation (with --checkpoint-db)")
    parser.add_argument("--checkpoint-db", type=Path, default=None,
                        help="SQLite file that keeps threads (and their masks) between runs")
    parser.add_argument("--max-rounds", type=int, default=3, help="refinement rounds after the first (default 3)")
    parser.add_argument("--quiet", action="store_true", help="print only the answer")
    parser.add_argument("--window", default=None, help="CT/MR display window: a preset (lung, abdomen, liver, "
                                                      "brain, bone, ...) or CENTER,WIDTH (default: the file's own, "
                                                      "else by concept for CT, else percentiles)")
    parser.add_argument("--slices", default=None, metavar="START:END",
                        help="segment only these slices of a volume, e.g. 40:80 (end exclusive)")
    parser.add_argument("--slice-axis", type=int, choices=[0, 1, 2], default=None,
                        help="a NIfTI volume's voxel axis to slice along (default: the last)")


def add_recording_options(parser: argparse.ArgumentParser, scope: str = "") -> None:
    """--record DIR and --replay DIR (``run`` and ``eval``); ``scope`` starts their help ("agent mode: ")."""
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help=f"{scope}write every MLLM request and reply to DIR (with the images sent: patient "
                             "pixels), to replay the run later with --replay DIR; nothing is recorded without it")
    parser.add_argument("--replay", type=Path, default=None, metavar="DIR",
                        help=f"{scope}answer from a recording made with --record DIR (planner replay, no network); "
                             "a request the recording does not hold is an error naming what differs")


def checked_image(args: argparse.Namespace) -> str | None:
    """The image to send (None: the thread's own), after the checks that need no model loaded."""
    if args.thread_id and args.checkpoint_db is None:
        raise ValueError("--thread-id needs --checkpoint-db: without it the thread would not outlive this command")
    if args.max_rounds < 0:
        raise ValueError(f"--max-rounds must be >= 0, got {args.max_rounds}")
    check_replay_options(args)
    image: str | None = None if (args.thread_id and args.image == "-") else args.image
    if image is not None and not Path(image).exists():
        raise FileNotFoundError(f"{image}: no such image file or series folder")
    return image


def check_replay_options(args: argparse.Namespace) -> None:
    """--replay goes with --planner replay (or auto) and takes the model from the recording."""
    if args.replay is not None and args.planner == "auto":
        args.planner = "replay"
    if (args.planner == "replay") != (args.replay is not None):
        raise ValueError("--planner replay and --replay DIR go together")
    if args.replay is not None:
        given = [flag for flag, value in (("--model", args.model), ("--base-url", args.base_url),
                                          ("--record", args.record)) if value]
        if given:
            raise ValueError(f"{', '.join(given)}: a replay takes its model from the recording and sends nothing")
    if args.record is not None and args.planner == "offline":
        raise ValueError("--record writes an MLLM planner's requests; the offline planner sends none")


def _study_or_path(image: str | None, args: argparse.Namespace):  # -> Study | str | None
    """A DICOM/NIfTI input loaded once with the window and slice axis asked for (a one-slice study keeps its
    pixel spacing for measurements); a photo stays a path for the 2D loader."""
    from segmenter.study_io import sniff

    if image is None:
        return None
    path = Path(image)
    if path.is_file():
        with path.open("rb") as stream:
            if sniff(stream.read(544), path.name) == "image":
                if args.window or args.slice_axis is not None or args.slices:
                    raise ValueError("--window, --slices and --slice-axis apply to DICOM and NIfTI inputs")
                return image
    from segmenter.study_io import load_study

    return load_study(path, window=args.window, slice_axis=args.slice_axis)


def _print_event(event) -> None:
    if event.node == "segment_volume" and event.kind == "tool_result" and event.data.get("total"):
        done, total = event.data["done"], event.data["total"]
        bar = "#" * (20 * done // total)
        print(f"[segment_volume] slices {done}/{total} [{bar:<20}] {event.ms / 1000:.0f}s", flush=True)
        return
    print(f"[{event.node or event.kind}] {event.kind}: {event.text[:200]}")


def main(args: argparse.Namespace) -> int:
    from agent import Agent
    from agent.config import Settings
    from agent.errors import AgentError

    image = _study_or_path(checked_image(args), args)
    settings = Settings()  # the environment, read once for this run
    planner = settings.planner_for(args.planner, base_url=args.base_url, model=args.model)
    llm = {k: v for k, v in (("model", args.model), ("base_url", args.base_url)) if v}
    llm = {**llm, "timeout": args.timeout} if planner == "openai" else {}
    agent = Agent(planner=planner, segmenter=args.segmenter, max_rounds=args.max_rounds,
                  checkpoint_db=args.checkpoint_db, llm_options=llm or None, settings=settings,
                  record=args.record, replay=args.replay)
    with agent:
        try:
            for event in agent.stream(args.question, image=image, thread_id=args.thread_id, slices=args.slices):
                if not args.quiet and event.kind != "answer":
                    _print_event(event)
                if event.result is not None:  # the last event, "answer"
                    result = event.result
        except AgentError as exc:
            if exc.partial is not None:  # keep what ran before the failure; no answer, no masks
                try:
                    exc.partial.save(args.out)
                    print(f"the run failed; its trace is in {args.out}/result.json (status: error)",
                          file=sys.stderr)
                except OSError as save_error:  # the run's own error is the one to report
                    print(f"could not write {args.out}/result.json: {save_error}", file=sys.stderr)
            raise  # cli.main prints the error and exits 2
    out = result.save(args.out)
    print(result.answer)
    if not args.quiet:
        summary = json.loads((out / "result.json").read_text(encoding="utf-8"))
        print(f"wrote {out}/overlay.png, {sum(1 + len(m['instances']) for m in summary['masks'])} mask PNG(s), "
              f"{out}/result.json")
        files = [item["path"] for item in summary["nifti"]]  # DICOM/NIfTI input: one per concept, found or not
        files += [summary["seg"]] if summary.get("seg") else []
        if files:
            print("wrote " + ", ".join(f"{out}/{f}" for f in files))
        if summary.get("seg_skipped"):
            print(f"no DICOM SEG: {summary['seg_skipped']}")
    return 0
