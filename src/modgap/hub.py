"""How modgap finds and loads 🤗 checkpoints: names, the offline rule, load arguments, dtypes, weight hashes.

* ``builtin:NAME`` names a tiny model shipped in the package (``modgap/builtin/NAME``), accepted wherever
  a model path is.
* Offline by default: without ``online`` every model must be a local directory and nothing is downloaded
  (``HF_HUB_OFFLINE`` is set for the process); ``online=True`` allows Hub ids.
* Remote code runs only with ``trust_remote_code=True``, which the user gives with ``--trust-remote-code``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import xxhash

from modgap.errors import ModgapError
from modgap.lazy import lazy_module

torch = lazy_module("torch")

PREFIX = "builtin:"
BUILTIN_DIR = Path(__file__).parent / "builtin"
# What a built-in model records beside its weights: the command that regenerates it and the prompts it knows.
MODEL_RECORD = "modgap_world.json"
# The command that regenerates each shipped model (models are data here; the world package trains them).
REGENERATE = {
    "tiny-clip": "modgap world train-encoder --out {path}",
    "tiny-lm": "modgap world train-lm --out {path}",
    # The second world's (the settings its calibration chose: docs/world.md).
    "tiny-clip-relations": "modgap world train-encoder --world relations --steps 1000 --lr 0.001 "
    "--partial-captions 0.3 --grouped 4 --position-init sincos --out {path}",
    "tiny-lm-relations": "modgap world train-lm --world relations --texts 100000 --steps 4000 --out {path}",
}


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
def builtin_path(name: str) -> Path:
    if name not in REGENERATE:
        raise ModgapError(f"unknown built-in model {name!r}; choose from {', '.join(REGENERATE)}")
    path = BUILTIN_DIR / name
    if not (path / "config.json").is_file():
        raise ModgapError(
            f"built-in model {name!r} is missing from {path}; regenerate it with " + REGENERATE[name].format(path=path)
        )
    return path


def is_builtin(spec: str) -> bool:
    return spec.startswith(PREFIX)


def resolve(path_or_spec: str) -> str:
    """``builtin:NAME`` → the shipped directory; anything else unchanged."""
    if is_builtin(path_or_spec):
        return str(builtin_path(path_or_spec[len(PREFIX) :]))
    return path_or_spec


def declared_prompts(model: str) -> dict[str, str]:
    """The prompt templates a local model declares it was trained on, by synthesis stage (``prompts`` in its
    ``modgap_world.json``: the built-in LM knows only the world's prompts); empty for any other model."""
    import json

    try:
        record = Path(resolve(model)) / MODEL_RECORD
    except ModgapError:
        return {}
    if not record.is_file():
        return {}
    try:
        prompts = json.loads(record.read_text()).get("prompts", {})
    except (OSError, ValueError, AttributeError) as e:
        raise ModgapError(f"{record}: not a readable model record ({e})") from e
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ModgapError(f"{record}: 'prompts' must map stage names to template strings")
    return prompts


def portable_name(spec: str) -> str:
    """What records name a model by: ``builtin:NAME`` stays portable, a local directory becomes absolute."""
    if is_builtin(spec):
        return spec
    local = Path(spec)
    return str(local.resolve()) if local.is_dir() else spec


# ---------------------------------------------------------------------------------------------
# Loading rules
# ---------------------------------------------------------------------------------------------
def use_offline_mode(online: bool) -> None:
    """Keep the process off the network unless ``online`` (🤗 libraries read ``HF_HUB_OFFLINE``)."""
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_kwargs(paths: list[str], online: bool, trust_remote_code: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments; offline, every path must be a local model directory."""
    for p in paths:
        if not online and not Path(p).is_dir():
            raise ModgapError(f"{p}: no such model directory (pass --online to download a Hub model)")
    return {"local_files_only": not online, "trust_remote_code": trust_remote_code}


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU; fp32 on CPU, where half-precision matmuls are far slower."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def weights_revision(path: str | os.PathLike) -> str | None:
    """A content hash of the weight files of a local model directory (xxh3-128 over all of them)."""
    files = sorted(p for p in Path(path).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    h = xxhash.xxh3_128()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(16 * 2**20):
                h.update(block)
    return f"xxh3_128:{h.hexdigest()}"


# ---------------------------------------------------------------------------------------------
# Causal LMs and tokenizers
# ---------------------------------------------------------------------------------------------
def load_llm(
    path: str, *, online: bool = False, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with modgap's names, offline and remote-code rules (fp32 default).
    A ``.gguf`` file is loaded (dequantised) through 🤗's GGUF support (needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM

    path, kwargs = _gguf_or_dir(resolve(path), online, trust_remote_code)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise ModgapError(f"{path}: cannot load a causal LM ({e})") from e


def _gguf_or_dir(path: str, online: bool, trust_remote_code: bool) -> tuple[str, dict[str, Any]]:
    """(directory, from_pretrained kwargs): a ``.gguf`` file is named to 🤗 by its directory and ``gguf_file``."""
    if path.endswith(".gguf") and Path(path).is_file():
        folder = str(Path(path).parent)
        return folder, {**load_kwargs([folder], online, trust_remote_code), "gguf_file": Path(path).name}
    return path, load_kwargs([path], online, trust_remote_code)


def load_tokenizer(path: str, *, online: bool = False, trust_remote_code: bool = False) -> Any:
    """A fast tokenizer (offsets are needed to find reply tokens) with a pad token (the EOS token if none)."""
    from transformers import AutoTokenizer

    path, kwargs = _gguf_or_dir(resolve(path), online, trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModgapError(f"{path}: cannot load a tokenizer ({e})") from e
    if not getattr(tok, "is_fast", False):
        raise ModgapError(f"{path}: needs a fast tokenizer (offsets locate the assistant tokens)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
