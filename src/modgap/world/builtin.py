"""The built-in tiny models shipped in the package, named ``builtin:NAME`` wherever a model path is taken."""

from __future__ import annotations

from pathlib import Path

from modgap.errors import ModgapError

BUILTIN_DIR = Path(__file__).parent / "builtin"
REGENERATE = {
    "tiny-clip": "modgap world train-encoder --out {path}",
    "tiny-lm": "modgap world train-lm --out {path}",
}
PREFIX = "builtin:"


def builtin_path(name: str) -> Path:
    if name not in REGENERATE:
        raise ModgapError(f"unknown built-in model {name!r}; choose from {', '.join(REGENERATE)}")
    path = BUILTIN_DIR / name
    if not (path / "config.json").is_file():
        raise ModgapError(
            f"built-in model {name!r} is missing from {path}; regenerate it with " + REGENERATE[name].format(path=path)
        )
    return path


def resolve(path_or_spec: str) -> str:
    """``builtin:NAME`` → the shipped directory; anything else unchanged."""
    if path_or_spec.startswith(PREFIX):
        return str(builtin_path(path_or_spec[len(PREFIX) :]))
    return path_or_spec
