"""The one way a package of modgap presents its names: loaded on first use (PEP 562), so that importing a
package costs only what is used (the CLI reads settings without torch; ``modgap.store`` opens a store
without loading the model code)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Namespace = tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]


def lazy_exports(package: str, names: dict[str, str]) -> Namespace:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, whose public ``names`` map to the module
    that defines them (relative to the package, or a full ``modgap.`` path)."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = names[name] if names[name].startswith("modgap.") else f"{package}.{names[name]}"
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__, sorted(names)
