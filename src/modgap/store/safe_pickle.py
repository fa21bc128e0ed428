"""A restricted unpickler for embedding pickles received from others.

Plain ``pickle.load`` runs whatever callable a file names, so a downloaded ``.pkl`` can execute code.
This loader admits only what embedding pickles need: containers, strings, numbers and numeric
NumPy arrays/scalars. Anything else is refused before it is called (the approach in the
"Restricting Globals" section of the ``pickle`` documentation).
"""

from __future__ import annotations

import builtins
import codecs
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from modgap.errors import ModgapError

try:  # NumPy 2 moved the module; pickles name either spelling.
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list."""


def _numeric_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise RefusedPickle("object dtype is not allowed")
    return dt


def _reconstruct(subtype: Any, *args: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise RefusedPickle("only plain numpy.ndarray may be reconstructed")
    return _multiarray._reconstruct(subtype, *args)


def _scalar(dtype: np.dtype, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedPickle("only numeric numpy scalars are allowed")
    return _multiarray.scalar(dtype, *args)


def _frombuffer(buf: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
    # Protocol 5 spelling of an array: raw bytes plus a dtype that went through _numeric_dtype.
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedPickle("only numeric arrays are allowed")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "set"): builtins.set,
    ("builtins", "frozenset"): builtins.frozenset,
    ("builtins", "bytearray"): builtins.bytearray,
    ("builtins", "complex"): builtins.complex,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # protocol 2 spells bytes this way
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _reconstruct
    _ALLOWED[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _frombuffer
for _name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"):
    _ALLOWED[("numpy", _name)] = getattr(np, _name)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"refused to load global {module}.{name}") from None


def safe_load(path: str | Path) -> Any:
    """Load a pickle file with :class:`RestrictedUnpickler`; any refusal becomes a ``ModgapError``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except RefusedPickle as e:
        raise ModgapError(f"{path}: unsafe pickle refused, not loaded ({e})") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ModgapError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from e
