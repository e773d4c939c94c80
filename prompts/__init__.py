"""Prompt texts (system prompt, tool descriptions) as package-data text files, loaded by name.

Placeholders are ``{name}`` with an identifier inside; only those are filled, so JSON examples
in the texts (``{"name": ...}``) stay as they are. A placeholder left unfilled is an error.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@lru_cache(maxsize=64)
def _read(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"prompt name {name!r} must be a plain file stem (letters, digits, _ and -)")
    path = resources.files("prompts").joinpath(f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt named {name!r} (expected prompts/{name}.txt)")
    return path.read_text(encoding="utf-8").strip()


def load_prompt(name: str, **values: object) -> str:
    """The text of ``prompts/<name>.txt`` with ``{key}`` placeholders filled from ``values``."""
    text = _read(name)

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"prompt {name!r} needs a value for {{{key}}}")
        return str(values[key])

    return _PLACEHOLDER.sub(fill, text)


def concept_list(names: list[str], descriptions: dict[str, str] | None = None) -> str:
    """One line per concept, for the system prompt."""
    descriptions = descriptions or {}
    return "\n".join(f"- {n}: {descriptions[n]}" if n in descriptions else f"- {n}" for n in names)
