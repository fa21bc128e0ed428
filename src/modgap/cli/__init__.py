"""The ``modgap`` command: ``main`` builds the app from one thin module per command group; ``options``
generates a command's options from its settings dataclasses."""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {"app": "main", "run": "main"})
