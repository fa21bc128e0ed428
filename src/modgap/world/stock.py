"""The built-in world's models in stock 🤗 form: a ``LlavaForConditionalGeneration`` assembled from
``builtin:tiny-clip``'s vision tower and ``builtin:tiny-lm``, with a ``LlavaProcessor`` (tiny-clip's PIL image
processor, tiny-lm's tokenizer with ``<image>`` added, its chat template).

It is what the stock-MLLM path (``embedder:DIR``, ``embedder distill|tune --init DIR``) runs on in the demo
and the benchmarks: the same vision tower and language model as the modgap-format path, so the two paths
compare at equal size. The projector (LLaVA's two-layer MLP from patch features to LM embeddings) starts from
a seeded random initialisation; LLaVA's stage-1 pretraining of it on world pairs is not done here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from modgap.hub import resolve

IMAGE_TOKEN = "<image>"


def assemble_llava(out: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write the stock LLaVA described in the module docstring to ``out`` (a directory that
    ``AutoModelForImageTextToText`` + ``AutoProcessor`` load) and return it."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # loading a CLIP checkpoint's vision half reports the text half as unused
    try:
        return _assemble(Path(out), seed)
    finally:
        hf_logging.set_verbosity(verbosity)


def _assemble(out: Path, seed: int) -> Path:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    clip_dir, lm_dir = resolve("builtin:tiny-clip"), resolve("builtin:tiny-lm")
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    lm.resize_token_embeddings(len(tokenizer))
    vision_config = CLIPVisionConfig.from_pretrained(clip_dir)
    vision = CLIPVisionModel.from_pretrained(clip_dir, dtype=torch.float32)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=lm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.vision_tower.load_state_dict(vision.state_dict())
    llava.model.language_model.load_state_dict(lm.model.state_dict())
    llava.lm_head.load_state_dict(lm.lm_head.state_dict())
    llava.save_pretrained(out, safe_serialization=True)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(clip_dir),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        num_additional_image_tokens=1,  # CLIP's class token
        vision_feature_select_strategy="default",
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(out)
    return out
