"""MedSAM3's LoRA file (native SAM 3 module names) merged into transformers' ``Sam3Model``.

The file is what the MedSAM3 / SAM3_LoRA training code saves with ``torch.save``: for every adapted
linear layer ``<module>``, ``<module>.lora.lora_A`` of shape (in, r) and ``<module>.lora.lora_B`` of
shape (r, out). The layer then computes ``W x + (alpha / r) * x A B``, so merging adds
``(alpha / r) * (A B)^T`` (shape (out, in)) to ``W``.

Everything is checked before a single weight changes: every key must be an A/B pair of the
configured rank, map to a transformers weight, and fit its shape. Otherwise ``LoraMismatchError``
lists each problem (the original loader uses ``strict=False`` and silently skips mismatches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from segmenter.sam3.keymap import Target, linear_candidates

SUFFIX_A = ".lora.lora_A"
SUFFIX_B = ".lora.lora_B"
# wrappers a training script may leave in front of module names (DDP, a checkpoint's sub-model)
STRIPPED_PREFIXES = ("module.",)


class LoraMismatchError(ValueError):
    """The LoRA file does not fit the model; ``problems`` lists every reason."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:40])
        more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
        super().__init__(
            f"LoRA file {path} does not fit this SAM 3 model ({len(problems)} problem(s)); nothing was merged:\n"
            f"{shown}{more}"
        )


@dataclass
class LoraMerge:
    """What a merge did: which native modules went to which transformers weights."""

    path: str
    rank: int
    alpha: float
    modules: dict[str, list[str]] = field(default_factory=dict)  # native module -> transformers weights

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def summary(self) -> dict:
        weights = sorted({k for targets in self.modules.values() for k in targets})
        return {"path": self.path, "rank": self.rank, "alpha": self.alpha, "modules": len(self.modules),
                "weights": len(weights)}


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The file's tensors, from ``torch.save`` (tensors only, no pickled code) or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors has its own error types for corrupt headers
            raise ValueError(f"{path}: not a valid safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: a clear line instead of a traceback
        raise ValueError(f"{path}: not a readable torch.save file ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(state, dict) and len(state) == 1:
        (only,) = state.values()
        if isinstance(only, dict):  # {"state_dict": {...}} and similar wrappers
            state = only
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")  # noqa: TRY004 (a bad file, not a bad call)
    return state


def _strip(key: str) -> str:
    for prefix in STRIPPED_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _resolve(module: str, params: dict[str, nn.Parameter]) -> list[Target] | None:
    for targets in linear_candidates(module):
        if all(t.hf_key in params for t in targets):
            return targets
    return None


def _pair_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """The file's tensors grouped as module -> {"A": lora_A, "B": lora_B}, and the keys that are no LoRA weight."""
    problems: list[str] = []
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for raw_key, value in state.items():
        key = _strip(str(raw_key))
        if not isinstance(value, torch.Tensor):
            problems.append(f"{raw_key}: not a tensor ({type(value).__name__})")
        elif key.endswith(SUFFIX_A):
            pairs.setdefault(key[: -len(SUFFIX_A)], {})["A"] = value
        elif key.endswith(SUFFIX_B):
            pairs.setdefault(key[: -len(SUFFIX_B)], {})["B"] = value
        else:
            problems.append(f"{raw_key}: not a LoRA key (expected '<module>{SUFFIX_A}' or '<module>{SUFFIX_B}')")
    return pairs, problems


def _pair_problem(module: str, pair: dict[str, torch.Tensor], rank: int) -> str | None:
    """What is wrong with one module's (lora_A, lora_B) on its own, or None."""
    if "A" not in pair or "B" not in pair:
        missing = SUFFIX_B if "A" in pair else SUFFIX_A
        return f"{module}: {missing} is missing"
    a, b = pair["A"], pair["B"]
    if a.ndim != 2 or b.ndim != 2:
        return f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} must both be 2-D"
    if a.shape[1] != rank or b.shape[0] != rank:
        return (
            f"{module}: rank {a.shape[1]}/{b.shape[0]} (lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}) "
            f"differs from the configured rank {rank}"
        )
    return None


def _target_problem(module: str, a: torch.Tensor, b: torch.Tensor, targets: list[Target],
                    params: dict[str, nn.Parameter]) -> str | None:
    """The first transformers weight whose shape the LoRA delta does not fit, or None."""
    in_features, out_features = a.shape[0], b.shape[1]
    parts = len(targets) if targets[0].part is not None else 1
    for t in targets:
        expected = (out_features // parts, in_features)
        actual = tuple(params[t.hf_key].shape)
        if out_features % parts or actual != expected:
            return f"{module} -> {t.hf_key}: LoRA delta is {expected} (out, in) but the weight is {actual}"
    return None


def plan_lora(
    state: dict[str, torch.Tensor], params: dict[str, nn.Parameter], rank: int, path: str = "<memory>"
) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[Target]]]:
    """Check the file against the model; return native module -> (A, B, targets) or raise with every problem."""
    pairs, problems = _pair_keys(state)
    if not pairs and not problems:
        problems.append("the file holds no LoRA weights")
    plan = {}
    for module, pair in sorted(pairs.items()):
        problem = _pair_problem(module, pair, rank)
        if problem is not None:
            problems.append(problem)
            continue
        a, b = pair["A"], pair["B"]
        targets = _resolve(module, params)
        if targets is None:
            tried = [t.hf_key for option in linear_candidates(module) for t in option]
            problems.append(f"{module}: no matching transformers weight (looked for {', '.join(tried)})")
            continue
        problem = _target_problem(module, a, b, targets, params)
        if problem is not None:
            problems.append(problem)
        else:
            plan[module] = (a, b, targets)
    if problems:
        raise LoraMismatchError(path, problems)
    return plan


@torch.no_grad()
def merge_lora(model: nn.Module, path: str | Path, rank: int, alpha: float) -> LoraMerge:
    """Merge a native MedSAM3 LoRA file into ``model`` in place (fp32 arithmetic, stored in the model's dtype)."""
    if rank <= 0 or alpha <= 0:
        raise ValueError(f"LoRA rank and alpha must be positive, got rank={rank}, alpha={alpha}")
    state = read_lora_file(path)
    params = dict(model.named_parameters())
    plan = plan_lora(state, params, rank, str(path))
    report = LoraMerge(path=str(path), rank=rank, alpha=alpha)
    for module, (a, b, targets) in plan.items():
        delta = (a.double() @ b.double()).T * (alpha / rank)  # (out, in); float64 so the merge adds no error of its own
        chunks = delta.chunk(3, dim=0) if targets[0].part is not None else (delta,)
        for target in targets:
            weight = params[target.hf_key]
            part = chunks[target.part or 0]
            weight.copy_((weight.double() + part.to(weight.device)).to(weight.dtype))
        report.modules[module] = [t.hf_key for t in targets]
    return report
