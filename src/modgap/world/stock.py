"""The built-in world's models in stock 🤗 form: a ``LlavaForConditionalGeneration`` assembled from
``builtin:tiny-clip``'s vision tower and ``builtin:tiny-lm``, with a ``LlavaProcessor`` (tiny-clip's PIL image
processor, tiny-lm's tokenizer with ``<image>`` added, its chat template).

It is what the stock-MLLM path (``embedder:DIR``, ``embedder distill|tune --init DIR``) runs on in the demo
and the benchmarks: the same vision tower and language model as the modgap-format path, so the two paths
compare at equal size. The projector (LLaVA's two-layer MLP from patch features to LM embeddings) is either a
seeded random initialisation or, with ``projector=MODEL``, the projector of a modgap model pretrained on
world pairs over tiny-clip's patch tokens (``modgap train pretrain`` on a ``--features patch`` store with the
projector alone tuned: LLaVA's stage 1). That projector has LLaVA's architecture (linear, GELU, linear, one
token per patch) and reads the same features (the penultimate vision layer without the class token), so the
assembled model sees an image as that model does. ``modgap_world.json`` records how to rebuild it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from modgap.errors import ModgapError
from modgap.files import atomic_output_dir, write_json
from modgap.hub import MODEL_RECORD, resolve

IMAGE_TOKEN = "<image>"


def assemble_llava(
    out: str | os.PathLike, *, seed: int = 0, projector: str | os.PathLike | None = None, overwrite: bool = False
) -> Path:
    """Write the stock LLaVA described in the module docstring to ``out`` (a directory that
    ``AutoModelForImageTextToText`` + ``AutoProcessor`` load, written whole or not at all) and return it."""
    from transformers.utils import logging as hf_logging

    weights = _pretrained_projector(Path(projector)) if projector is not None else None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # loading a CLIP checkpoint's vision half reports the text half as unused
    try:
        with atomic_output_dir(out, overwrite, markers=(MODEL_RECORD,)) as tmp:
            _assemble(Path(tmp), seed, weights)
            command = f"modgap world assemble-llava --out {out} --seed {seed}"
            if projector is not None:
                command += f" --projector {projector}"
            origin = str(projector) if projector is not None else "random"
            record = {"command": command, "seed": seed, "vision": "builtin:tiny-clip",
                      "language_model": "builtin:tiny-lm", "projector": origin}  # fmt: skip
            write_json(Path(tmp) / MODEL_RECORD, record)
        return Path(out)
    finally:
        hf_logging.set_verbosity(verbosity)


def _pretrained_projector(model_dir: Path) -> dict[str, torch.Tensor]:
    """LLaVA's projector weights from a modgap model over tiny-clip's patch tokens on tiny-lm (checked)."""
    from safetensors.torch import load_file

    from modgap.hub import resolve
    from modgap.mllm.config import PROJECTOR_FILE, MLLMConfig

    config = MLLMConfig.load(model_dir)
    if config.token_mode != "patch" or config.projector != "mlp":
        raise ModgapError(f"{model_dir}: its projector is {config.projector!r} over {config.token_mode!r} tokens; "
                          "LLaVA's is an 'mlp' over patch tokens (train it on a --features patch store)")  # fmt: skip
    if config.llm_weights is not None or Path(resolve(config.base_llm)) != Path(resolve("builtin:tiny-lm")):
        raise ModgapError(f"{model_dir}: its language model is not builtin:tiny-lm as saved (base "
                          f"{config.base_llm!r}, weights {config.llm_weights!r}); only a projector moves")  # fmt: skip
    if config.encoder != "builtin:tiny-clip" or config.has_aligner:
        raise ModgapError(f"{model_dir}: it reads {config.encoder!r} features"
                          f"{' through an aligner' if config.has_aligner else ''}, not tiny-clip's own")  # fmt: skip
    state = load_file(str(model_dir / PROJECTOR_FILE))
    names = {"first": "linear_1", "second": "linear_2"}
    return {f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in state.items()}


def _assemble(out: Path, seed: int, projector: dict[str, torch.Tensor] | None) -> None:
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
    if projector is not None:
        llava.model.multi_modal_projector.load_state_dict(projector)
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
