"""The settings of a vision-language model and of its training, torch-free (the CLI builds its options here).

:class:`MLLMConfig` is the saved description of a model: what to load and how to feed it.
:class:`TrainConfig` holds every setting of ``modgap train``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import from_mapping, setting, setting_like
from modgap.training.settings import RunSettings

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


@dataclasses.dataclass
class TrainConfig(RunSettings):
    """Every setting of ``modgap train pretrain|sft``; the command's options are generated from these fields."""

    stage: str = setting("pretrain", "pretrain or sft (set by the subcommand).")
    data: list[str] = setting(list, "Conversation or caption file (JSON/JSONL); repeatable.")
    embeddings: list[str] = setting(list, "Store joined by id to the matching --data; repeatable.")
    llm: str | None = setting(None, "Base causal LM directory (default: builtin:tiny-lm).")
    init: str | None = setting(None, "modgap model directory to start from (sft: the pretrained one).")
    aligner: str | None = setting(None, "Aligner for raw text stores (images get its target view).")
    num_visual_tokens: int = setting(8, "k: visual tokens per embedding.", flag="--visual-tokens")
    projector: str = setting("mlp", "mlp (2-layer GELU) or linear.")
    token_mode: str = setting(
        "expand", "expand (k distinct tokens) or repeat (reference design); stores of patch features: patch tokens."
    )
    prompt: str | None = setting(None, "Instruction of caption-only samples.")
    chat_template: str | None = setting(None, "Jinja chat template (default: the tokenizer's).")
    max_length: int = setting(512, "Longer samples are cut from the end.")
    max_missing: float = setting(0.01, "Largest tolerated fraction of rows without an embedding.")
    noise_std: float = setting(0.0, "Train-time Gaussian noise on visual inputs (CapDec-style).")
    tune: str | None = setting(None, "projector | full | lora (default: projector for pretrain, full for sft).")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    lr: float | None = setting_like(RunSettings, "lr", None, "Learning rate (default 1e-3 pretrain, 2e-5 sft).")
    projector_lr: float | None = setting(None, "Projector learning rate (default: --lr).")

    def __post_init__(self) -> None:
        if self.stage not in ("pretrain", "sft"):
            raise ModgapError(f"unknown stage {self.stage!r}")
        self.check_run_settings()
        self.data, self.embeddings = [str(p) for p in self.data], [str(p) for p in self.embeddings]
        for name in ("init", "aligner"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        if len(self.data) != len(self.embeddings) or not self.data:
            raise ModgapError("give one --embeddings store per --data file (in the same order)")
        if self.llm is not None and self.init is not None:
            raise ModgapError("give either --llm (a base causal LM) or --init (a modgap model directory), not both")
        if self.llm is None and self.init is None:
            self.llm = "builtin:tiny-lm"  # the built-in world's LM: everything runs offline out of the box
        if self.tune is None:
            self.tune = "projector" if self.stage == "pretrain" else "full"
        if self.tune not in ("projector", "full", "lora"):
            raise ModgapError(f"unknown --tune {self.tune!r} (projector, full or lora)")
        if self.lr is None:
            self.lr = 1e-3 if self.stage == "pretrain" else 2e-5
        for name in ("grad_accum", "num_visual_tokens"):
            if getattr(self, name) < 1:
                raise ModgapError(f"--{name.replace('_', '-')} must be at least 1")
