"""Settings of a universal embedder and of its training, torch-free (the CLI builds its options here).

:class:`EmbedderConfig` is saved beside the vision-language model it wraps: how inputs become prompts and
how the prompt's hidden states become one vector. :class:`EmbedderTrainConfig` holds every setting of
``modgap embedder distill|tune``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import load_dataclass, setting, setting_like
from modgap.training.settings import RunSettings

EMBEDDER_FILE = "modgap_embedder.json"
TEXT_SLOT = "<sent>"  # where the input text goes in a template; "<image>" is where the visual tokens go

# UniME's summarising prompts: the last token's state must carry the whole input ("in one word").
DEFAULT_TEMPLATES = {
    "text": f"{TEXT_SLOT}\nSummarize above sentence in one word:",
    "image": "<image>\nSummarize above image in one word:",
    "image_text": f"<image>\n{TEXT_SLOT}\nSummarize above image and instruction in one word:",
}


@dataclasses.dataclass
class EmbedderConfig:
    """How a saved vision-language model is used as an encoder (``embedder:DIR``)."""

    method: str = "unime"
    templates: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    pooling: str = "last"  # the last non-padding token's final hidden state
    normalize: bool = True
    max_text_tokens: int = 128  # longer input texts are cut (the template's suffix is always kept)
    created_by: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(DEFAULT_TEMPLATES) - set(self.templates)
        if missing:
            raise ModgapError(f"embedder templates lack {sorted(missing)}")
        for kind, template in self.templates.items():
            if kind != "image" and TEXT_SLOT not in template:
                raise ModgapError(f"embedder template {kind!r} has no {TEXT_SLOT} slot: {template!r}")
            if kind != "text" and "<image>" not in template:
                raise ModgapError(f"embedder template {kind!r} has no <image> slot: {template!r}")
        if self.pooling != "last":
            raise ModgapError(f"unknown pooling {self.pooling!r} (last)")

    @classmethod
    def load(cls, directory: str | Path) -> EmbedderConfig:
        path = Path(directory) / EMBEDDER_FILE
        if not path.is_file():
            raise ModgapError(f"{directory}: not an embedder directory (no {EMBEDDER_FILE})")
        return load_dataclass(cls, path)


STAGES = ("distill", "tune")


@dataclasses.dataclass
class EmbedderTrainConfig(RunSettings):
    """Every setting of ``modgap embedder distill|tune``; the command's options are generated from these."""

    stage: str = setting("distill", "distill or tune (set by the subcommand).")
    data: str | None = setting(
        None, "distill: texts (id, text). tune: pairs in MMEB's training layout (qry, qry_image_path, pos_text, ...)."
    )
    teacher_embeddings: str | None = setting(None, "distill: store of the teacher's text embeddings, by id.")
    embeddings: str | None = setting(None, "tune: store of the image embeddings, by image path/id.")
    init: str | None = setting(
        None, "Start from: a modgap model or embedder directory, or a stock 🤗 multimodal LLM (LLaVA, Idefics3, ...)."
    )
    image_root: str | None = setting(
        None, "tune from a stock base: where qry/pos/neg_image_path files start (default: the data file's folder)."
    )
    templates: str | None = setting(None, "Stock base: prompt templates JSON (text, image, image_text; <sent>).")
    llm: str | None = setting(None, "Base causal LM when starting without --init (needs --embed-dim).")
    embed_dim: int | None = setting(None, "Visual embedding width of a model built from --llm (tune: the store's).")
    num_visual_tokens: int = setting(8, "k: visual tokens per embedding (models built from --llm).", "--visual-tokens")
    tune: str = setting("lora", "lora | full | projector (what of the LM is trained; tune also trains the projector).")
    temperature: float = setting(0.02, "tune: InfoNCE temperature; distill: the student's.")
    teacher_temperature: float = setting(0.02, "distill: temperature of the teacher's similarity softmax.")
    hard_negatives: int = setting(8, "tune: hardest in-batch negatives kept per query (k).")
    fn_margin: float = setting(0.1, "tune: drop candidates scoring above sim(q, pos) + margin (false negatives).")
    grad_cache_chunk: int | None = setting(None, "Gradient caching: forward/backward this many inputs at a time.")
    batch_size: int = setting_like(
        RunSettings,
        "batch_size",
        32,
        "Samples per process per step (in-batch negatives are gathered across processes).",
    )
    lr: float = setting_like(RunSettings, "lr", 1e-4)
    warmup_ratio: float = setting_like(RunSettings, "warmup_ratio", 0.05)
    lora_dropout: float = setting_like(RunSettings, "lora_dropout", 0.0)
    may_be_negative = ("fn_margin",)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ModgapError(f"unknown stage {self.stage!r} ({', '.join(STAGES)})")
        self.check_run_settings()
        for name in ("data", "init", "llm", "teacher_embeddings", "embeddings", "image_root", "templates"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))
        if not self.data:
            raise ModgapError("--data is required")
        if self.stage == "distill" and not self.teacher_embeddings:
            raise ModgapError("distill needs --teacher-embeddings (a store of the teacher's text embeddings)")
        if (self.init is None) == (self.llm is None):
            raise ModgapError("give either --init (a modgap model or embedder directory) or --llm, exactly one")
        if self.llm is not None and self.embed_dim is None and not (self.stage == "tune" and self.embeddings):
            raise ModgapError("--llm needs --embed-dim (the width of the image embeddings the model will read)")
        if self.tune not in ("lora", "full", "projector"):
            raise ModgapError(f"unknown --tune {self.tune!r} (lora, full or projector)")
        if self.stage == "distill" and self.tune == "projector":
            raise ModgapError("distill trains the language model: --tune lora or full")
        for name in ("num_visual_tokens",):
            if getattr(self, name) < 1:
                raise ModgapError(f"--{name.replace('_', '-')} must be at least 1")
        if self.grad_cache_chunk is not None and self.grad_cache_chunk < 1:
            raise ModgapError("--grad-cache-chunk must be at least 1")
        if self.temperature <= 0 or self.teacher_temperature <= 0:
            raise ModgapError("temperatures must be positive")
