"""Array arithmetic written once for NumPy (the CPU, no torch loaded) and torch (a device, or tensors given).

Code that runs on either backend calls these helpers for the few operations whose spelling differs and uses
plain operators (``@``, ``*=``, ``x / n[:, None]``) for the rest, so a method's formula exists once.

It also holds exact float16 <-> float32 conversion: NumPy's own cast runs at 2-10 ns per value on this kind
of CPU (torch's at ~0.5 ns), and float16 stores are read several times per aligner fit. Where the compiled
kernels (``modgap._kernels``: x86-64 with AVX2/F16C/FMA) are built, the CPU's conversion instructions do it
(~0.1 ns); elsewhere the bit manipulations below give the same bits as NumPy's cast at ~0.6 ns
(float16 -> float32) and ~2.7 ns (float32 -> float16, round to nearest even), with NumPy's cast kept for the
values outside the float16 normal range. ``MODGAP_KERNELS=0`` in the environment turns the kernels off.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import numpy as np

from modgap.lazy import is_tensor, lazy_module

torch = lazy_module("torch")

_BLOCK = 256  # rows per float32 partial sum in row_sum64; the blocks are then added in float64


def _load_kernels() -> Any:
    """The compiled kernels, or None (not built, another CPU, or ``MODGAP_KERNELS=0``)."""
    if os.environ.get("MODGAP_KERNELS", "1") == "0":
        return None
    try:
        from modgap import _kernels
    except ImportError:
        return None
    return _kernels if _kernels.supported() else None


KERNELS = _load_kernels()


def kernel_arrays(*arrays: np.ndarray) -> bool:
    """Whether the kernels take these NumPy arrays (they read and write C-contiguous buffers)."""
    return KERNELS is not None and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays)


class BufferPool:
    """Reusable NumPy buffers of one shape and dtype, shared between threads: a buffer given back is handed out
    again instead of a new one. Fresh large buffers cost a page fault on every first touch (measured: a copy
    into fresh 16 MiB batches ran at 1.5-2.5 GB/s instead of memcpy speed)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self._spare: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()

    def take(self) -> np.ndarray:
        try:
            return self._spare.get_nowait()
        except queue.Empty:
            return np.empty(self.shape, self.dtype)

    def give(self, buffer: np.ndarray) -> None:
        """Return a buffer from :meth:`take` once nothing refers to its contents any more."""
        self._spare.put(buffer)


def on_numpy(x: Any) -> bool:
    """Whether ``x`` is a NumPy array (or anything that is not a torch tensor)."""
    return not is_tensor(x)


def row_norms(x: Any) -> Any:
    """L2 norm of every row, in ``x``'s dtype; NaN/Inf components give non-finite norms."""
    if on_numpy(x):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.sqrt(np.einsum("ij,ij->i", x, x))
    return torch.linalg.vector_norm(x, dim=1)


def normalize_rows(x: Any, norms: Any | None = None) -> Any:
    """``x`` with each row divided by its norm (given, or computed)."""
    return x / (row_norms(x) if norms is None else norms)[:, None]


def add_rows_(x: Any, coef: Any, basis: Any) -> Any:
    """``x += coef @ basis`` in place (coef (n, k), basis (k, D)): a row-wise combination of k vectors."""
    if on_numpy(x):
        x += coef @ basis
        return x
    return x.addmm_(coef, basis)


def total(x: Any) -> float:
    """The float64 sum of a vector, as a Python float."""
    return float(x.sum(dtype=np.float64)) if on_numpy(x) else float(x.double().sum())


def like(value: np.ndarray, x: Any) -> Any:
    """A float64 NumPy parameter as an array of ``x``'s kind, dtype and device."""
    if on_numpy(x):
        return value.astype(x.dtype)
    return torch.from_numpy(np.ascontiguousarray(value)).to(device=x.device, dtype=x.dtype)


def host(x: Any) -> np.ndarray:
    """A NumPy array of ``x`` (copied from the device for a tensor)."""
    return x if on_numpy(x) else x.detach().cpu().numpy()


def row_sum64(x: Any, w: Any | None = None) -> np.ndarray:
    """float64 NumPy sum over rows of ``w[:, None] * x``.

    Computed as float32 dot products over blocks of 256 rows (fast BLAS, small rounding error) whose partial
    sums are added in float64, so the error does not grow with the number of rows.
    """
    n, d = x.shape
    full = n - n % _BLOCK
    out = np.zeros(d, dtype=np.float64)
    if on_numpy(x):
        w = np.ones(n, dtype=x.dtype) if w is None else w
        if full:
            parts = np.matmul(w[:full].reshape(-1, 1, _BLOCK), x[:full].reshape(-1, _BLOCK, d))
            out += parts[:, 0].sum(0, dtype=np.float64)
        if full < n:
            out += w[full:] @ x[full:]
        return out
    w = torch.ones(n, dtype=x.dtype, device=x.device) if w is None else w
    if full:
        parts = torch.bmm(w[:full].view(-1, 1, _BLOCK), x[:full].view(-1, _BLOCK, d))
        out += parts.squeeze(1).sum(0, dtype=torch.float64).cpu().numpy()
    if full < n:
        out += (w[full:] @ x[full:]).double().cpu().numpy()
    return out


def outer_sum64(x: Any, w: Any | None = None) -> np.ndarray:
    """float64 NumPy sum over rows of ``(w x)(w x)^T``."""
    if on_numpy(x):
        xd = x.astype(np.float64) if w is None else x.astype(np.float64) * w.astype(np.float64)[:, None]
        return xd.T @ xd
    xd = x.double() if w is None else x.double() * w.double()[:, None]
    return (xd.T @ xd).cpu().numpy()


# -- exact float16 <-> float32 in NumPy ------------------------------------------------------------------
_SCALE_UP = np.float32(2.0**112)  # float16 bits moved into a float32's place, times this, are the value
_KEEP_SIGN_AND_LOW = np.int32(-1879048193)  # 0x8FFFFFFF: the sign and the 28 low bits
_NOT_FINITE = np.float32(65536.0)  # float16 Inf/NaN come out of the shift at |x| >= 2**16
_REBIAS = np.uint32(0xC8000FFF)  # exponent 127 -> 15 (mod 2**32), plus half a float16 ulp less one
_NORMAL_LOW, _NORMAL_HIGH = np.uint32(0x38800000), np.uint32(0x47800000)  # float16 normal range, float32 bits


def half_to_float(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = src`` for float16 ``src`` into float32 ``out`` of the same shape: the bits NumPy's cast
    gives, Inf and NaN included."""
    if kernel_arrays(src, out) and not KERNELS.half_to_float(src, out):
        return out  # (a NaN's payload may differ from NumPy's there: such arrays take the code below)
    bits = out.view(np.int32)
    np.copyto(bits, src.view(np.int16), casting="unsafe")  # sign-extends: the sign lands in bit 31
    np.left_shift(bits, 13, out=bits)
    np.bitwise_and(bits, _KEEP_SIGN_AND_LOW, out=bits)
    np.multiply(out, _SCALE_UP, out=out)  # exact: a power of two; float16 subnormals become normal here
    if out.size and (out.max() >= _NOT_FINITE or out.min() <= -_NOT_FINITE):
        np.copyto(out, src, casting="unsafe")
    return out


def float_to_half(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = src`` for float32 ``src`` into float16 ``out`` (C-contiguous, same shape), rounding to
    nearest even: the bits NumPy's cast gives (values outside the float16 normal range go through it)."""
    if kernel_arrays(src, out) and not KERNELS.float_to_half(src, out):
        return out
    u = src.reshape(-1).view(np.uint32)
    o = out.reshape(-1).view(np.uint16)
    a, t = _scratch("f2h.a", u.size, np.uint32), _scratch("f2h.t", u.size, np.uint32)
    np.bitwise_and(u, np.uint32(0x7FFFFFFF), out=a)  # |x|
    np.right_shift(a, 13, out=t)
    np.bitwise_and(t, np.uint32(1), out=t)  # the last kept mantissa bit: ties round to even
    np.add(t, a, out=t)
    np.add(t, _REBIAS, out=t)
    np.right_shift(t, 13, out=t)
    sign = _scratch("f2h.sign", u.size, np.uint32)
    np.right_shift(u, 16, out=sign)
    np.bitwise_and(sign, np.uint32(0x8000), out=sign)
    np.bitwise_or(t, sign, out=t)
    np.copyto(o, t, casting="unsafe")
    if u.size and (a.min() < _NORMAL_LOW or a.max() >= _NORMAL_HIGH):  # zeros, subnormals, overflow, Inf, NaN
        np.subtract(a, _NORMAL_LOW, out=t)  # wraps below the range: one unsigned comparison finds both ends
        odd = np.flatnonzero(t >= _NORMAL_HIGH - _NORMAL_LOW)
        with np.errstate(over="ignore"):
            o[odd] = src.reshape(-1)[odd].astype(np.float16).view(np.uint16)
    return out


_SCRATCH = threading.local()


def _scratch(name: str, n: int, dtype: Any) -> np.ndarray:
    """A reusable buffer of ``n`` values for this thread: fresh allocations of this size fault in new pages
    on every call, which costs more than the arithmetic."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get(name)
    if buf is None or buf.size < n:
        buf = buffers[name] = np.empty(n, dtype=dtype)
    return buf[:n]


def to_float32(src: Any, out: np.ndarray) -> np.ndarray:
    """Copy rows of any float dtype into the float32 buffer ``out`` (the fast path for float16)."""
    if src.dtype == np.float16 and src.flags.c_contiguous and out.flags.c_contiguous:
        return half_to_float(src, out)
    np.copyto(out, src, casting="unsafe")
    return out


def rows_and_norms(src: Any, out: np.ndarray) -> np.ndarray:
    """Copy rows of any float dtype into the float32 buffer ``out`` and return their float32 norms (one pass
    for contiguous float16 rows where the kernels are built)."""
    if src.dtype == np.float16 and src.ndim == 2 and kernel_arrays(src, out):
        norms = np.empty(len(src), np.float32)
        KERNELS.half_rows(src, out, norms, src.shape[1])
        return norms
    return row_norms(to_float32(src, out))


def store_values(x: Any, dtype: str) -> np.ndarray:
    """Rows ``x`` (NumPy or torch) as a new NumPy array of a store's ``dtype``, never ``x`` itself (it may be a
    buffer that is reused). Tensors are converted by torch, whose kernels are the faster ones."""
    if not on_numpy(x):
        return x.to(getattr(torch, dtype)).cpu().numpy()
    return store_as(x, np.empty(x.shape, dtype=dtype))


def store_as(src: Any, out: np.ndarray) -> np.ndarray:
    """Copy rows (NumPy or torch, any float dtype) into the buffer ``out`` of a store's dtype."""
    src = host(src)
    if out.dtype == np.float16 and src.dtype == np.float32 and src.flags.c_contiguous and out.flags.c_contiguous:
        return float_to_half(src, out)
    with np.errstate(over="ignore"):
        np.copyto(out, src, casting="unsafe")
    return out
