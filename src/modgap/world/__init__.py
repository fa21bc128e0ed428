"""The built-in world: scenes rendered as images and described in words, tiny built-in models, and the
demo that measures the method on them (``demo``, ``embedder_demo``, ``steps``, ``scaling``, ``unicorn_row``,
``report``).
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "run_demo": "demo",
        "make_scenes": "scene",
        "caption": "scene",
        "render": "scene",
    },
)
