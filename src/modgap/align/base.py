"""The aligner interface, its registry, and the saved artifact (safetensors + JSON).

An aligner maps source vectors (usually text embeddings) into the target distribution (usually image
embeddings). Fitting is a fixed number of streaming passes; in each pass the aligner accumulates
:class:`~modgap.align.stats.Moments` over source (and, in the first pass, target) chunks, the driver
merges them across processes, and :meth:`Aligner.end_pass` turns them into parameters.

Every method receives raw float32 rows plus their L2 norms: all methods work on unit vectors, and
knowing the norms lets the hot paths fold the normalisation into their arithmetic. Rows are NumPy arrays on
the CPU (no torch loaded) or torch tensors (a device, or tensors given); each formula is written once for
both (:mod:`modgap.arrays`), and the fitted parameters are float64 NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modgap.align.stats import SOURCE, TARGET, Moments
from modgap.arrays import host, row_norms, store_as, store_values
from modgap.arrays import normalize_rows as normalize_rows
from modgap.errors import ModgapError
from modgap.files import atomic_output_dir
from modgap.lazy import is_tensor, lazy_module
from modgap.store.checks import bad_row_mask

safetensors_numpy = lazy_module("safetensors.numpy")
torch = lazy_module("torch")

ARTIFACT_TENSORS = "aligner.safetensors"
ARTIFACT_CONFIG = "aligner.json"
KINDS = ("baseline", "aligner", "augmentation")

REGISTRY: dict[str, type[Aligner]] = {}


def register(cls: type[Aligner]) -> type[Aligner]:
    REGISTRY[cls.method] = cls
    return cls


def method_names(*kinds: str) -> tuple[str, ...]:
    """Registered method names in registration order, optionally only those of the given kinds."""
    return tuple(m for m, cls in REGISTRY.items() if not kinds or cls.kind in kinds)


def method_help() -> dict[str, str]:
    """Each method's one-line description (the first line of its docstring), for listings and errors."""
    return {m: (cls.__doc__ or "").strip().splitlines()[0] for m, cls in REGISTRY.items()}


@dataclasses.dataclass
class Aligner:
    """Base class. Subclasses are dataclasses whose fields are the method's hyper-parameters."""

    method: ClassVar[str] = ""
    # "baseline" (no alignment), "aligner" (moves the source distribution), or "augmentation" (train-time
    # noise only; not a comparison the demo makes).
    kind: ClassVar[str] = "aligner"
    normalizes_output: ClassVar[bool] = True  # whether transform() returns unit vectors
    passes: ClassVar[int] = 1  # streaming passes over the source that fit() needs
    target_passes: ClassVar[tuple[int, ...]] = (0,)  # passes that also read the target
    second_order: ClassVar[bool] = False  # whether pass 0 needs sums of outer products
    # Whether pass 0 is the default accumulate (sums of unit vectors), so a store's kept sums can stand for it.
    pass0_unit_sums: ClassVar[bool] = False
    # Parameters that must not be negative (noise scales); every float parameter must be finite.
    non_negative: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name, value in self.params().items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ModgapError(f"{self.method}: parameter {name} must be a finite number, got {value}")
            if name in self.non_negative and value < 0:
                raise ModgapError(f"{self.method}: parameter {name} must not be negative, got {value}")
        self.state: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.provenance: dict[str, Any] = {}

    # -- fitting protocol, driven by modgap.align.fitting ---------------------------------------------
    def new_stats(self, p: int, dim: int, roles: tuple[str, ...] | None = None) -> dict[str, Moments]:
        """Empty sums for pass ``p``: of every role the pass reads, or of ``roles``."""
        roles = roles or ((SOURCE, TARGET) if p in self.target_passes else (SOURCE,))
        return {r: Moments(dim, second_order=self.second_order and p == 0) for r in roles}

    def accumulate(self, p: int, role: str, x: Any, norms: Any, stats: dict[str, Moments]) -> None:
        """Default pass 0: sums of the unit vectors of each role."""
        stats[role].update(x, 1.0 / norms)

    def end_pass(self, p: int, stats: dict[str, Moments]) -> None:
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        return self.passes == 0 or bool(self.state)

    @property
    def output_normalized(self) -> bool:
        """Whether aligned rows are unit vectors (a store of them is recorded as normalised)."""
        return self.normalizes_output

    # -- transforms ---------------------------------------------------------------------------
    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        """Map raw float32 source rows ``x`` (with their norms; NumPy or torch, may be overwritten) to aligned
        rows of the same kind."""
        raise NotImplementedError

    def transform_rows_as(
        self, x: Any, norms: Any, dtype: str, row_start: int = 0, out: np.ndarray | None = None
    ) -> np.ndarray:
        """:meth:`transform_rows` as a NumPy array of a store's ``dtype`` (what :func:`apply_to_store` writes):
        written into ``out`` (NumPy, that dtype, ``x``'s shape) when given, else a new array; a method may
        fuse the conversion into its arithmetic."""
        y = self.transform_rows(x, norms, row_start)
        return store_values(y, dtype) if out is None else store_as(y, out)

    def transform_target_rows(self, x: Any, norms: Any) -> Any:
        """What evaluation does to target rows; identity (after normalisation) unless the method changes it."""
        return normalize_rows(x, norms)

    def train_transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Train-time view of source rows: the aligned rows plus :meth:`train_noise`."""
        return self.train_noise(self.transform(x), generator)

    def train_noise(self, aligned: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What training adds to already aligned rows (C3 corrupts them with fresh noise); identity by default.

        Training on a store written by :func:`~modgap.align.fitting.apply_to_store` applies only this, so it
        sees the same rows as training on the raw store with the aligner applied on the fly.
        """
        return aligned

    def transform(self, x: Any, row_start: int = 0) -> Any:
        """Align source vectors (any float dtype): a NumPy array for an array, a tensor (on its device) for a
        tensor. Rows must be non-zero and finite."""
        x, norms = _prepare(x)
        return self.transform_rows(x, norms, row_start)

    def transform_target(self, x: Any) -> Any:
        x, norms = _prepare(x)
        return self.transform_target_rows(x, norms)

    # -- convenience --------------------------------------------------------------------------
    def fit(self, source: Any, target: Any, **kwargs: Any) -> Aligner:
        """Fit on a source and a target (stores, arrays or tensors); see :func:`modgap.align.fitting.fit`."""
        from modgap.align.fitting import fit

        return fit(self, source, target, **kwargs)

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ModgapError(f"aligner {self.method!r} is not fitted")

    def require_dim(self, dim: int, where: str) -> None:
        """Refuse vectors of another width than the aligner was fitted on (``where`` names their store)."""
        fitted = next((int(v.shape[-1]) for v in self.state.values() if v.ndim >= 1), dim)
        if fitted != dim:
            raise ModgapError(
                f"dimension mismatch: aligner {self.method!r} was fitted on D={fitted}, {where} has D={dim}"
            )

    # -- artifact -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``aligner.safetensors`` + ``aligner.json`` into the directory ``path`` (atomically)."""
        self._require_fitted()
        with atomic_output_dir(path, overwrite=True, markers=(ARTIFACT_CONFIG,)) as tmp:
            safetensors_numpy.save_file(
                {k: np.array(v, order="C") for k, v in self.state.items()}, str(tmp / ARTIFACT_TENSORS)
            )
            config = {
                "method": self.method,
                "params": self.params(),
                "counts": self.counts,
                "provenance": self.provenance,
            }
            (tmp / ARTIFACT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return Path(path)


def _prepare(x: Any) -> tuple[Any, Any]:
    """float32 copies of the rows (transforms work in place) and their norms; bad rows refused."""
    x = x.to(torch.float32, copy=True) if is_tensor(x) else np.array(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    norms = row_norms(x)
    bad = bad_row_mask(host(norms))
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise ModgapError(f"cannot align rows {rows[:10]}: NaN, Inf or zero vectors")
    return x, norms


def make_aligner(method: str, **params: Any) -> Aligner:
    if method not in REGISTRY:
        raise ModgapError(f"unknown alignment method {method!r}; choose one of {sorted(REGISTRY)}")
    cls = REGISTRY[method]
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(params) - set(names)
    if unknown:
        raise ModgapError(f"method {method!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(names)}")
    return cls(**params)


def parse_params(method: str, items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings into typed parameters of ``method``."""
    if method not in REGISTRY:
        raise ModgapError(f"unknown alignment method {method!r}; choose one of {sorted(REGISTRY)}")
    fields = {f.name: f for f in dataclasses.fields(REGISTRY[method])}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ModgapError(f"--param {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise ModgapError(f"--param {item!r}: {value!r} is not a valid {type(default).__name__}") from None
    return out


def load_aligner(path: str | os.PathLike) -> Aligner:
    """Load an aligner saved with :meth:`Aligner.save`."""
    path = Path(path)
    cfg_path, tensors_path = path / ARTIFACT_CONFIG, path / ARTIFACT_TENSORS
    if not cfg_path.is_file():
        raise ModgapError(f"{path}: not an aligner directory (no {ARTIFACT_CONFIG})")
    try:
        cfg = json.loads(cfg_path.read_text())
        aligner = make_aligner(cfg["method"], **cfg.get("params", {}))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModgapError(f"{cfg_path}: malformed aligner config ({e})") from e
    if tensors_path.is_file():
        aligner.state = dict(safetensors_numpy.load_file(str(tensors_path)))
    aligner.counts = dict(cfg.get("counts", {}))
    aligner.provenance = dict(cfg.get("provenance", {}))
    aligner._require_fitted()
    return aligner


# The built-in methods register themselves when their module is imported; importing it here makes the
# registry complete whichever module of the package is imported first.
from modgap.align import methods as _builtin_methods  # noqa: E402, F401
