"""LLM2CLIP: a CLIP vision tower whose text side is an LLM2Vec encoder plus a learned projection.

Texts go through the LLM2Vec model (a decoder LLM turned into a bidirectional encoder), are mean-pooled
over the text's own tokens (not the chat template's prefix, as LLM2Vec's ``skip_instruction`` does),
and the pooled vector goes through the LLM2CLIP checkpoint's ``get_text_features``. Images go through
its ``get_image_features``. This follows the ReVision seed, which wraps texts in the Llama-3-Instruct
user turn before encoding. The ``llm2vec`` package itself pins transformers 4.44, so the LLM2Vec
encoding is done here with the model's own (remote) code loaded through ``AutoModel``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from modgap.encoders.base import IMAGE, Encoder, Prepared
from modgap.encoders.hf import FastImagePrep, ImagePrep, _features, image_prep_for, pixel_values
from modgap.errors import ModgapError
from modgap.hub import default_dtype, load_kwargs, weights_revision

# (prefix, suffix) around each text; pooling covers the text and the suffix, as in LLM2Vec.
TEMPLATES = {
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    "none": ("", ""),
}


class LLM2VecTextPrep:
    """Left-padded tokenisation plus, per text, how many trailing tokens to mean-pool (picklable)."""

    def __init__(self, tokenizer: Any, template: tuple[str, str], max_length: int):
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length

    def __call__(self, texts: list[str]) -> Prepared:
        prefix, suffix = self.template
        bodies = [t.strip() + suffix for t in texts]
        out = self.tokenizer(
            [prefix + b for b in bodies], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        lengths = [
            len(self.tokenizer(b, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"])
            for b in bodies
        ]
        totals = out["attention_mask"].sum(1)
        return {
            "input_ids": out["input_ids"],
            "attention_mask": out["attention_mask"],
            "pool_lengths": torch.minimum(torch.tensor(lengths), totals),
        }


class LLM2CLIPEncoder(Encoder):
    def __init__(
        self,
        vision_path: str,
        text_path: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        online: bool = False,
        trust_remote_code: bool = False,
        max_text_length: int | None = None,
        template: str = "llama3",
    ):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        kwargs = load_kwargs([vision_path, text_path], online, trust_remote_code)
        if template not in TEMPLATES:
            raise ModgapError(f"unknown LLM2Vec template {template!r}; choose one of {sorted(TEMPLATES)}")
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        try:
            clip = AutoModel.from_pretrained(vision_path, dtype=self.dtype, **kwargs)
            self.image_processor = AutoImageProcessor.from_pretrained(vision_path, **kwargs)
            llm = AutoModel.from_pretrained(text_path, dtype=self.dtype, **kwargs)
            self.tokenizer = AutoTokenizer.from_pretrained(text_path, **kwargs)
        except (OSError, ValueError) as e:
            hint = "" if trust_remote_code else " (LLM2CLIP checkpoints need --trust-remote-code)"
            raise ModgapError(f"cannot load LLM2CLIP from {vision_path}, {text_path}: {e}{hint}") from e
        missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(clip, m)]
        if missing:
            raise ModgapError(f"{vision_path}: {type(clip).__name__} lacks {', '.join(missing)}")
        self.tokenizer.padding_side = "left"  # mean pooling takes the last n positions of each row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.clip = clip.to(self.device).eval()
        self.llm = llm.to(self.device).eval()
        self._llm_args = set(inspect.signature(self.llm.forward).parameters)
        self.template = TEMPLATES[template]
        self.max_text_length = max_text_length or 512
        self.name = f"llm2clip:{vision_path},{text_path}"
        self.revision = ",".join(str(weights_revision(Path(p))) for p in (vision_path, text_path))

    def image_preprocessor(self) -> ImagePrep | FastImagePrep:
        return image_prep_for(self.image_processor)

    def text_preprocessor(self) -> LLM2VecTextPrep:
        return LLM2VecTextPrep(self.tokenizer, self.template, self.max_text_length)

    def pool(self, hidden: torch.Tensor, pool_lengths: torch.Tensor) -> torch.Tensor:
        """Mean of the last ``pool_lengths[i]`` positions of row i (rows are left-padded)."""
        length = hidden.shape[1]
        positions = torch.arange(length, device=hidden.device)[None, :]
        mask = (positions >= length - pool_lengths.to(hidden.device)[:, None]).to(hidden.dtype)
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    @torch.inference_mode()
    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if modality == IMAGE:
            pixels = pixel_values(batch, self.image_processor, self.dtype)
            feats = _features(self.clip.get_image_features(pixel_values=pixels))
        else:
            mask = batch["attention_mask"]
            args = {"input_ids": batch["input_ids"], "attention_mask": mask}
            if "position_ids" in self._llm_args:  # left padding must not shift positions
                args["position_ids"] = (mask.cumsum(1) - 1).clamp_min(0)
            hidden = self.llm(**args).last_hidden_state
            pooled = self.pool(hidden.float(), batch["pool_lengths"])
            feats = _features(self.clip.get_text_features(pooled.to(self.dtype)))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()
