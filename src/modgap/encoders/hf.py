"""🤗 transformers dual encoders: CLIP, SigLIP/SigLIP2, and any model with get_image_features/get_text_features."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modgap.encoders.base import IMAGE, Encoder, Prepared
from modgap.errors import ModgapError
from modgap.hub import default_dtype, load_kwargs, weights_revision

# Model types whose text towers pool the last position and were trained on max-length padding.
PAD_TO_MAX_LENGTH = ("siglip", "siglip2")


def _features(out: Any) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding;
    # earlier versions returned the tensor itself.
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ModgapError(f"cannot find embeddings in {type(out).__name__} (no pooler_output)")
    return pooled


class ImagePrep:
    """Image preprocessing alone (picklable, so DataLoader workers can run it)."""

    def __init__(self, image_processor: Any):
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> Prepared:
        out = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return {"pixel_values": out["pixel_values"]}


class FastImagePrep:
    """CLIP/SigLIP preprocessing split in two: resize and crop with PIL to uint8 in the worker (4x less data
    to pass between processes, no float work there), then rescale and normalise as one batched tensor op.

    Gives the same pixels as the 🤗 PIL image processors (tested); other processors use :class:`ImagePrep`.
    """

    KINDS = ("CLIPImageProcessor", "CLIPImageProcessorPil", "SiglipImageProcessor", "SiglipImageProcessorPil")

    def __init__(self, processor: Any):
        self.resample = Image.Resampling(processor.resample)
        size = processor.size
        self.shortest_edge = size.get("shortest_edge")
        self.resize_hw = None if self.shortest_edge else (size["height"], size["width"])
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        self.crop_hw = (crop["height"], crop["width"]) if crop else None

    @classmethod
    def supports(cls, processor: Any) -> bool:
        size = getattr(processor, "size", None) or {}
        flags = all(getattr(processor, f, False) for f in ("do_resize", "do_rescale", "do_normalize"))
        return type(processor).__name__ in cls.KINDS and flags and ("shortest_edge" in size or "height" in size)

    def _resize(self, im: Image.Image) -> Image.Image:
        w, h = im.size
        if self.shortest_edge:
            s = self.shortest_edge
            new = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        else:
            new = (self.resize_hw[1], self.resize_hw[0])
        im = im.resize(new, resample=self.resample)
        if self.crop_hw:
            ch, cw = self.crop_hw
            left, top = (im.width - cw) // 2, (im.height - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
        return im

    def __call__(self, images: list[Image.Image]) -> Prepared:
        arrays = [np.asarray(self._resize(im.convert("RGB"))) for im in images]
        return {"pixel_uint8": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()}


def image_prep_for(image_processor: Any) -> ImagePrep | FastImagePrep:
    """The fast uint8 path where the processor is one it reproduces exactly, else the processor itself."""
    return FastImagePrep(image_processor) if FastImagePrep.supports(image_processor) else ImagePrep(image_processor)


def pixel_values(batch: Prepared, image_processor: Any, dtype: torch.dtype) -> torch.Tensor:
    """The model's input pixels; batches from :class:`FastImagePrep` are rescaled and normalised here."""
    if "pixel_uint8" not in batch:
        return batch["pixel_values"].to(dtype)
    pixels = batch["pixel_uint8"].float() * image_processor.rescale_factor
    mean = torch.tensor(image_processor.image_mean, device=pixels.device)[:, None, None]
    std = torch.tensor(image_processor.image_std, device=pixels.device)[:, None, None]
    return ((pixels - mean) / std).to(dtype)


PATCH_LAYER = -2  # LLaVA's vision_feature_layer


class TextPrep:
    """Tokenisation alone (picklable). SigLIP-style models pad to max length, as they were trained."""

    def __init__(self, tokenizer: Any, pad_to_max: bool, max_length: int, keys: set[str]):
        self.tokenizer, self.pad_to_max, self.max_length, self.keys = tokenizer, pad_to_max, max_length, keys

    def __call__(self, texts: list[str]) -> Prepared:
        out = self.tokenizer(
            texts,
            padding="max_length" if self.pad_to_max else True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in out.items() if k in self.keys}


DUAL_ENCODER_METHODS = ("get_image_features", "get_text_features")


def _model_class(config: Any) -> type | None:
    """The class ``AutoModel`` would build for ``config`` (None for remote code or an unknown type)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        return None


def _require_dual_encoder(path: str, cls: type | None) -> None:
    missing = [m for m in DUAL_ENCODER_METHODS if cls is not None and not hasattr(cls, m)]
    if missing:
        raise ModgapError(f"{path}: {cls.__name__} is not a dual encoder (it lacks {', '.join(missing)})")


class HFDualEncoder(Encoder):
    def __init__(
        self,
        path: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        online: bool = False,
        trust_remote_code: bool = False,
        max_text_length: int | None = None,
    ):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        local = Path(path)
        kwargs = load_kwargs([path], online, trust_remote_code)
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        try:
            config = AutoConfig.from_pretrained(path, **kwargs)
            _require_dual_encoder(path, _model_class(config))  # before the weights are read (and reported on)
            model = AutoModel.from_pretrained(path, dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as e:
            raise ModgapError(f"{path}: cannot load a transformers model ({e})") from e
        _require_dual_encoder(path, type(model))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            self.image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ModgapError(f"{path}: cannot load its tokenizer or image processor ({e})") from e
        self.model = model.to(self.device).eval()
        self.name = f"hf:{path}"
        self.revision = weights_revision(local) if local.is_dir() else getattr(config, "_commit_hash", None)
        text_config = getattr(config, "text_config", config)
        limit = getattr(text_config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_text_length = min(max_text_length or limit, limit)
        self.pad_to_max = getattr(config, "model_type", "") in PAD_TO_MAX_LENGTH
        self._text_args = set(inspect.signature(model.get_text_features).parameters)

    def image_preprocessor(self) -> ImagePrep | FastImagePrep:
        return image_prep_for(self.image_processor)

    def text_preprocessor(self) -> TextPrep:
        return TextPrep(self.tokenizer, self.pad_to_max, self.max_text_length, self._text_args)

    def text_length(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text))

    @torch.inference_mode()
    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if modality == IMAGE:
            batch = {"pixel_values": pixel_values(batch, self.image_processor, self.dtype)}
        fn = self.model.get_image_features if modality == IMAGE else self.model.get_text_features
        feats = _features(fn(**batch)).float()
        return torch.nn.functional.normalize(feats, dim=-1).cpu()

    @torch.inference_mode()
    def embed_patches(self, batch: Prepared) -> torch.Tensor:
        """LLaVA's choice: the penultimate vision layer's hidden states, without the class token (CLIP has one,
        SigLIP none)."""
        tower = getattr(self.model, "vision_model", None)
        if tower is None:
            raise ModgapError(f"{self.name}: {type(self.model).__name__} has no vision_model to take patches from")
        pixels = pixel_values({k: v.to(self.device) for k, v in batch.items()}, self.image_processor, self.dtype)
        hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[PATCH_LAYER]
        if getattr(tower.embeddings, "class_embedding", None) is not None:
            hidden = hidden[:, 1:]
        return hidden.float().cpu()
