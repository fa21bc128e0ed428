"""The alignment methods. Each is a small dataclass: its fields are its hyper-parameters.

Notation: x̂ = x / ||x|| (source rows, usually text), mu_t / mu_i = means of the unit source / target
vectors, normalize(v) = v / ||v|| row-wise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from modgap.align.base import Aligner, method_names, register
from modgap.align.stats import SOURCE, TARGET, Moments
from modgap.arrays import KERNELS, add_rows_, kernel_arrays, like, normalize_rows, on_numpy, row_norms, total
from modgap.errors import ModgapError
from modgap.lazy import lazy_module

torch = lazy_module("torch")

C3_NOISE_STD = math.sqrt(0.016)


class _Params(Aligner):
    """Helpers for fitted float64 parameters used at the input's kind, dtype and device."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._cache: dict[tuple[str, str, str], Any] = {}

    def p(self, name: str, like_x: Any) -> Any:
        if name not in self.state:
            self._require_fitted()
        key = (name, *_kind(like_x))
        if key not in self._cache:
            self._cache[key] = like(self.state[name], like_x)
        return self._cache[key]

    def set_state(self, **arrays: np.ndarray) -> None:
        self.state.update({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
        self._cache.clear()

    def _means(self, stats: dict[str, Moments]) -> tuple[np.ndarray, np.ndarray]:
        for role in (SOURCE, TARGET):
            if role in stats and stats[role].n == 0:
                raise ModgapError(f"cannot fit {self.method!r}: the {role} has no usable vectors")
        self.counts = {role: stats[role].n for role in stats}
        return stats[SOURCE].mean(), stats[TARGET].mean()


def _kind(x: Any) -> tuple[str, str]:
    """Where and how ``x`` holds numbers ("numpy" or its device, its dtype): a parameter cache's key."""
    return ("numpy" if on_numpy(x) else str(x.device), str(x.dtype))


def gaussian_noise_rows(seed: int, row_start: int, n: int, dim: int) -> np.ndarray:
    """Standard normal float32 noise for global rows [row_start, row_start + n), independent of chunking.

    Rows are grouped in blocks of 1024, each drawn from its own generator seeded by (seed, block).
    """
    block = 1024
    out = np.empty((n, dim), dtype=np.float32)
    first, last = row_start // block, (row_start + n - 1) // block
    for b in range(first, last + 1):
        noise = np.random.default_rng(np.random.SeedSequence([seed, b])).standard_normal((block, dim), np.float32)
        lo, hi = max(row_start, b * block), min(row_start + n, (b + 1) * block)
        out[lo - row_start : hi - row_start] = noise[lo - b * block : hi - b * block]
    return out


def _noisy(x: torch.Tensor, std: float, renormalize: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Train-time noise (training runs on tensors)."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    y = x + std * noise
    return normalize_rows(y) if renormalize else y


@register
@dataclasses.dataclass
class NoAlignment(_Params):
    """Identity (after L2 normalisation): the baseline."""

    method = "none"
    kind = "baseline"
    passes = 0

    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        return normalize_rows(x, norms)


@register
@dataclasses.dataclass
class MeanShift(_Params):
    """Unicorn's representation transfer: x̂ - mu_t (not renormalised); with ``add_target_mean``, x̂ - mu_t + mu_i."""

    method = "mean-shift"
    pass0_unit_sums = True
    normalizes_output = False
    add_target_mean: bool = False

    def end_pass(self, p: int, stats: dict[str, Moments]) -> None:
        mu_t, mu_i = self._means(stats)
        self.set_state(mu_t=mu_t, mu_i=mu_i)

    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        shift = self.p("mu_t", x) - self.p("mu_i", x) if self.add_target_mean else self.p("mu_t", x)
        return normalize_rows(x, norms) - shift


@register
@dataclasses.dataclass
class C3(_Params):
    """C3 collapse: each modality minus its own mean, renormalised. Corrupt (noise) at train time."""

    method = "c3"
    pass0_unit_sums = True
    noise_std: float = C3_NOISE_STD
    renormalize_noise: bool = False
    non_negative = ("noise_std",)

    def end_pass(self, p: int, stats: dict[str, Moments]) -> None:
        mu_t, mu_i = self._means(stats)
        self.set_state(mu_t=mu_t, mu_i=mu_i)

    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        return normalize_rows(normalize_rows(x, norms) - self.p("mu_t", x))

    def transform_target_rows(self, x: Any, norms: Any) -> Any:
        return normalize_rows(normalize_rows(x, norms) - self.p("mu_i", x))

    def train_noise(self, aligned: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return _noisy(aligned, self.noise_std, self.renormalize_noise, generator)


@register
@dataclasses.dataclass
class GaussianNoise(_Params):
    """CapDec: x̂ + N(0, std^2). ``apply`` draws noise deterministically per row from ``seed``."""

    method = "noise"
    kind = "augmentation"
    passes = 0
    std: float = C3_NOISE_STD
    renormalize: bool = False
    seed: int = 0
    non_negative = ("std",)

    @property
    def output_normalized(self) -> bool:
        return self.renormalize

    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        noise = like(gaussian_noise_rows(self.seed, row_start, x.shape[0], x.shape[1]), x)
        y = normalize_rows(x, norms) + self.std * noise
        return normalize_rows(y) if self.renormalize else y

    def train_transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return _noisy(NoAlignment().transform(x), self.std, self.renormalize, generator)


class _CentroidCorrected(_Params):
    """Two passes: pass 0 fits a map g; pass 1 measures mu_hat = mean of normalize(g(x̂)) over the source.

    Output: normalize(normalize(g(x̂)) - mu_hat + mu_i), so the aligned source centroid lands on mu_i
    (renormalising after g moves the mean; this step puts it back).
    """

    passes = 2

    def mapped(self, x: Any, norms: Any) -> Any:
        """normalize(g(x̂)); may overwrite ``x``."""
        raise NotImplementedError

    def accumulate(self, p: int, role: str, x: Any, norms: Any, stats: dict[str, Moments]) -> None:
        if p == 0:
            super().accumulate(p, role, x, norms, stats)
        else:
            stats[SOURCE].update(self.mapped(x, norms))

    def end_pass(self, p: int, stats: dict[str, Moments]) -> None:
        if p == 0:
            self.fit_map(stats)
        else:
            self.set_state(mu_hat=stats[SOURCE].mean())

    def fit_map(self, stats: dict[str, Moments]) -> None:
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        return "mu_hat" in self.state

    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        y = self.mapped(x, norms)
        y += self.p("shift", y)
        y /= row_norms(y)[:, None]
        return y

    def set_state(self, **arrays: np.ndarray) -> None:
        super().set_state(**arrays)
        if "mu_hat" in self.state:
            self.state["shift"] = self.state["mu_i"] - self.state["mu_hat"]


@register
@dataclasses.dataclass
class ReAlign(_CentroidCorrected):
    """ReAlign (anchor, trace, centroid): g(x̂) = s (x̂ - mu_t) + mu_i with s = sqrt(T_i / T_t).

    For unit vectors the trace T = mean ||x̂ - mu||^2 equals 1 - ||mu||^2, so one pass gives both
    the means and the traces.
    """

    method = "realign"
    pass0_unit_sums = True

    def fit_map(self, stats: dict[str, Moments]) -> None:
        mu_t, mu_i = self._means(stats)
        trace_t, trace_i = 1.0 - mu_t @ mu_t, 1.0 - mu_i @ mu_i
        if trace_t <= 0:
            raise ModgapError("cannot fit 'realign': the source vectors have zero spread (all identical)")
        scale = np.sqrt(trace_i / trace_t)
        self.set_state(mu_t=mu_t, mu_i=mu_i, scale=scale, trace_t=trace_t, trace_i=trace_i, offset=mu_i - scale * mu_t)

    def mapped(self, x: Any, norms: Any) -> Any:
        x *= (float(self.state["scale"]) / norms)[:, None]
        x += self.p("offset", x)
        x /= row_norms(x)[:, None]
        return x

    # The hot paths below give the same numbers as mapped() + the centroid step, but touch each chunk
    # fewer times: with c = offset, y = s x̂ + c has ||y||^2 = s^2 + 2 s x̂·c + ||c||^2, so the norms come
    # from one matrix-vector product and the output is a per-row combination of x, c and d = mu_i - mu_hat.
    _DEGENERATE = 1e-4  # ||y||^2 below this: cancellation; such rows take the direct formula

    def _constants(self) -> dict[str, float]:
        """Scalars of the fused formulas, from the float64 state (cached until the state changes)."""
        key = ("constants", "numpy", "float64")
        if key not in self._cache:
            st = self.state
            c, d = st["offset"], st.get("shift", np.zeros_like(st["offset"]))
            consts = {"s": float(st["scale"]), "cc": float(c @ c), "cd": float(c @ d), "dd": float(d @ d)}
            self._cache[key] = consts
        return self._cache[key]

    def _rows(self, names: tuple[str, ...], like_x: Any) -> Any:
        """The named state vectors stacked as a contiguous (k, D) matrix: ``x @ rows.T`` is the fast product."""
        key = ("rows:" + ",".join(names), *_kind(like_x))
        if key not in self._cache:
            self._cache[key] = like(np.stack([self.state[n] for n in names]), like_x)
        return self._cache[key]

    def accumulate(self, p: int, role: str, x: Any, norms: Any, stats: dict[str, Moments]) -> None:
        if p == 0:
            super().accumulate(p, role, x, norms, stats)
            return
        k = self._constants()
        if kernel_arrays(x, norms) and x.dtype == norms.dtype == np.float32:  # one compiled pass per row
            acc = np.zeros(x.shape[1])
            first, inv_m_sum = KERNELS.realign_sums(x, norms, self._rows(("offset",), x)[0], k["s"], k["cc"],
                                                    self._DEGENERATE, acc)  # fmt: skip
            if first < 0:
                stats[SOURCE].count += x.shape[0]
                stats[SOURCE].sum += acc + inv_m_sum * self.state["offset"]
                return
        xc = (x @ self._rows(("offset",), x).T)[:, 0]
        m2 = k["s"] * k["s"] + 2 * k["s"] * xc / norms + k["cc"]
        if bool((m2 < self._DEGENERATE).any()):
            super().accumulate(p, role, x, norms, stats)
            return
        inv_m = m2**-0.5
        stats[SOURCE].update(x, k["s"] * inv_m / norms)  # adds sum of s x̂ / m
        stats[SOURCE].sum += total(inv_m) * self.state["offset"]  # + c sum 1/m

    def transform_rows(self, x: Any, norms: Any, row_start: int = 0) -> Any:
        k = self._constants()
        cd = self._rows(("offset", "shift"), x)
        dots = x @ cd.T
        m2 = k["s"] * k["s"] + 2 * k["s"] * dots[:, 0] / norms + k["cc"]
        if bool((m2 < self._DEGENERATE).any()):
            return super().transform_rows(x, norms, row_start)
        inv_m = m2**-0.5
        yd = (k["s"] * dots[:, 1] / norms + k["cd"]) * inv_m  # ŷ·d
        inv_z = (1 + 2 * yd + k["dd"]) ** -0.5  # 1 / ||ŷ + d||
        x *= (k["s"] * inv_m * inv_z / norms)[:, None]
        coef = dots[:, :2]  # reused as the (n, 2) coefficients of c and d
        coef[:, 0] = inv_m * inv_z
        coef[:, 1] = inv_z
        return add_rows_(x, coef, cd)

    def transform_rows_as(
        self, x: Any, norms: Any, dtype: str, row_start: int = 0, out: np.ndarray | None = None
    ) -> np.ndarray:
        # float16 out on the CPU: one compiled pass per row (dots, coefficients, combination, conversion).
        if dtype == "float16" and kernel_arrays(x, norms) and x.dtype == norms.dtype == np.float32:
            y = np.empty(x.shape, np.float16) if out is None else out
            k, cd = self._constants(), self._rows(("offset", "shift"), x)
            if kernel_arrays(y) and KERNELS.realign_rows(x, norms, cd[0], cd[1], k["s"], k["cc"], k["cd"], k["dd"],
                                                         self._DEGENERATE, y) < 0:  # fmt: skip
                return y
        return super().transform_rows_as(x, norms, dtype, row_start, out)


def _sym_sqrt(c: np.ndarray, inverse: bool = False) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    vals = np.sqrt(np.clip(vals, 0, None))
    if inverse:
        vals = 1.0 / vals
    return (vecs * vals) @ vecs.T


@register
@dataclasses.dataclass
class GaussianOT(_CentroidCorrected):
    """Closed-form optimal transport between the fitted Gaussians, then the centroid step.

    g(x̂) = mu_i + A (x̂ - mu_t), A = C_t^-1/2 (C_t^1/2 C_i C_t^1/2)^1/2 C_t^-1/2. Covariances are shrunk
    towards a multiple of the identity, C <- (1 - shrinkage) C + shrinkage tr(C)/D I, so that
    rank-deficient ones (fewer vectors than dimensions, or collapsed directions) stay invertible.
    """

    method = "gaussian-ot"
    second_order = True
    shrinkage: float = 1e-3

    def accumulate(self, p: int, role: str, x: Any, norms: Any, stats: dict[str, Moments]) -> None:
        if p == 0:
            stats[role].update(normalize_rows(x, norms))
        else:
            super().accumulate(p, role, x, norms, stats)

    def fit_map(self, stats: dict[str, Moments]) -> None:
        if not 0 < self.shrinkage <= 1:
            raise ModgapError(f"gaussian-ot: shrinkage must be in (0, 1], got {self.shrinkage}")
        mu_t, mu_i = self._means(stats)
        cov_t, cov_i = (self._shrink(stats[r].covariance()) for r in (SOURCE, TARGET))
        root_t = _sym_sqrt(cov_t)
        inv_root_t = _sym_sqrt(cov_t, inverse=True)
        middle = _sym_sqrt(root_t @ cov_i @ root_t)
        transport = inv_root_t @ middle @ inv_root_t
        transport = (transport + transport.T) / 2
        self.set_state(mu_t=mu_t, mu_i=mu_i, transport=transport)

    def _shrink(self, cov: np.ndarray) -> np.ndarray:
        d = cov.shape[0]
        return (1 - self.shrinkage) * cov + self.shrinkage * np.trace(cov) / d * np.eye(d)

    def mapped(self, x: Any, norms: Any) -> Any:
        centred = normalize_rows(x, norms) - self.p("mu_t", x)
        y = centred @ self.p("transport", x)
        y += self.p("mu_i", x)
        y /= row_norms(y)[:, None]
        return y


METHODS = method_names()  # the built-in methods, in registration order
