"""Which runtime runs a part of the network: its cached conversion where there is one (runtime.py, no PyTorch),
else a conversion made now (convert.py), else PyTorch's module itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from segmenter.lite.runtime import Run, litemedsam_checkpoint, load_part, part_folder, runtime_for, say

# (what, source files, PyTorch module factory, test input factory) of one part: what build_part takes
PartSpec = tuple[str, list[Path], Callable[[], Any], Callable[[], tuple[Any, ...]]]


def part_spec(kind: str, device: str, module: Callable[[], Any], weights: Path | None = None) -> PartSpec:
    """The spec of part ``kind``: "encoder" and "box" are LiteMedSAM's (its checkpoint is their source), "gate" is
    the trained ``weights``' and "draw" both's; the test input is convert.part_test_input's for ``kind``."""
    checkpoint = litemedsam_checkpoint()
    if kind in ("encoder", "box"):
        sources = [checkpoint]
    elif weights is None:
        raise ValueError(f"the {kind} part needs the trained weights it comes from")
    else:
        sources = [weights] if kind == "gate" else [weights, checkpoint]
    what = {"encoder": "image encoder", "box": "box decoder", "gate": "presence gate", "draw": "concept decoder"}[kind]

    def test() -> tuple[Any, ...]:
        from segmenter.lite.convert import part_test_input

        return part_test_input(kind, device)

    return what, sources, module, test


def build_part(choice: str | None, device: str, what: str, sources: list[Path], module: Callable[[], Any],
               test: Callable[[], tuple[Any, ...]], bf16: Callable[[], bool] = lambda: False) -> tuple[str, Run]:
    """(runtime used, part) for ``what`` on the runtime ``choice`` asks for: the cached conversion where there is one
    (no PyTorch needed), else converted now from ``module()`` on ``test()``'s shapes (convert.py), else PyTorch's
    ``module()`` itself. The factories are called only where needed: a cached part never builds the network."""
    runtime = runtime_for(choice, device, what)
    if runtime != "torch":
        folder = part_folder(what, runtime, sources)
        try:
            run = load_part(runtime, folder)
        except Exception as exc:  # a broken runtime or cache: convert again below, or fall back
            say(f"warning: cached {runtime} {what} unreadable ({type(exc).__name__}); converting again")
            run = None
        if run is None:
            from segmenter.lite.convert import convert  # PyTorch: imported only to convert

            run = convert(runtime, module(), test(), folder, what)
        if run is not None:
            return runtime, run
    from segmenter.lite.convert import torch_runner

    return "torch", torch_runner(module(), bf16())
