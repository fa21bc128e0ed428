"""Heavy modules imported on first use: ``torch = lazy_module("torch")`` costs nothing until an attribute of
``torch`` is read (``import torch`` alone takes ~2 s), so a command that never touches a tensor — reading a
store's manifest, listing aligners, printing help — never loads it.

``is_tensor(x)`` answers without loading torch: if torch is not loaded, ``x`` cannot be a tensor.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it when one of its attributes is first read."""

    def __init__(self, name: str):
        self.__dict__["_name"] = name

    def _load(self) -> ModuleType:
        return importlib.import_module(self.__dict__["_name"])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        loaded = "loaded" if self.__dict__["_name"] in sys.modules else "not loaded yet"
        return f"<lazy module {self.__dict__['_name']!r} ({loaded})>"


def lazy_module(name: str) -> Any:
    """The module ``name``, imported when first used (typed ``Any``: it stands for the module itself)."""
    return sys.modules.get(name) or LazyModule(name)


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)
