"""The saved description of a vision-language model: what to load and how to feed it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import from_mapping

CONFIG_FILE = "modgap_mllm.json"
PROJECTOR_FILE = "projector.safetensors"
TOKENIZER_DIR = "tokenizer"
LLM_DIR = "llm"  # full fine-tune: the whole LLM in 🤗 format
ADAPTER_DIR = "adapter"  # LoRA: a peft adapter over the base LLM
ALIGNER_DIR = "aligner"  # the aligner the visual inputs went through (copied in, so the model is self-contained)
DEFAULT_PROMPT = "Describe the image briefly."


@dataclasses.dataclass
class MLLMConfig:
    base_llm: str  # directory (or Hub id) of the base causal LM
    embed_dim: int
    hidden_size: int
    num_visual_tokens: int = 8
    projector: str = "mlp"
    token_mode: str = "expand"
    llm_weights: str | None = None  # None: base unchanged; "llm": full weights saved; "adapter": LoRA
    prompt: str = DEFAULT_PROMPT
    max_length: int = 512
    encoder: str | None = None  # encoder spec of the embeddings, for `modgap generate --image`
    has_aligner: bool = False
    trust_remote_code: bool = False
    created_by: dict[str, Any] = dataclasses.field(default_factory=dict)

    def save(self, directory: Path) -> None:
        (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> MLLMConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise ModgapError(f"{directory}: not a modgap model directory (no {CONFIG_FILE})")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModgapError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise ModgapError(f"{path}: expected a JSON object")
        return from_mapping(cls, raw, f"{path} (written by a newer modgap?)")
