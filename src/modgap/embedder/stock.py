"""A stock 🤗 multimodal LLM as an embedder (UniME's setting): any directory that
``AutoModelForImageTextToText`` + ``AutoProcessor`` load — LLaVA(-NeXT), Qwen2-VL, Idefics3/SmolVLM, ... —
with its own processor reading the raw image and its own vision tower.

An input becomes a prompt through a *template* (``text``, ``image``, ``image_text``; ``<sent>`` marks the
text, the processor's image token the image). The prompt is tokenised exactly as ``processor(text=prompt,
images=...)`` tokenises it, the model runs with ``output_hidden_states``, and the embedding is the final hidden
state of the last non-padding token, L2-normalised: UniME's Quick Start. Prompts are padded on the right, so
a vector does not depend on what else is in its batch, whatever padding side the checkpoint was saved with.

Templates are literal strings (used verbatim, e.g. ``"[INST] <image>\\nSummary above image in one word:
[/INST]"``) from ``--templates FILE.json`` or ``modgap_embedder.json`` beside the model; without them the
defaults are rendered through the model's chat template with a generation prompt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from modgap.embedder.model import last_token_states
from modgap.encoders.base import IMAGE, Encoder, Prepared
from modgap.errors import ModgapError
from modgap.files import read_text
from modgap.hub import load_kwargs, weights_revision

TEXT_SLOT = "<sent>"
MARKER = "<image>"  # where an input text marks its image (modgap's placeholder; MMEB's <|image_1|> becomes it)
KINDS = ("text", "image", "image_text")
TEMPLATES_FILE = "modgap_embedder.json"
# UniME's summarising instructions (the last token must carry the whole input: "in one word").
INSTRUCTIONS = {
    "text": f"{TEXT_SLOT}\nSummarize above sentence in one word:",
    "image": "{image}\nSummarize above image in one word:",
    "image_text": f"{{image}}\n{TEXT_SLOT}\nSummarize above image and instruction in one word:",
}


def is_stock_mllm(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a 🤗 image-text-to-text checkpoint (by its ``config.json``'s model type)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        model_type = json.loads(read_text(config)).get("model_type")
    except json.JSONDecodeError:
        return False
    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def image_token(processor: Any) -> str:
    token = getattr(processor, "image_token", None)
    if not token:
        raise ModgapError(f"{type(processor).__name__} names no image token; give literal --templates")
    return str(token)


def check_templates(templates: dict[str, str], token: str, where: str) -> dict[str, str]:
    """The three templates, each with the slots its inputs need; an error naming the template otherwise."""
    missing = [k for k in KINDS if k not in templates]
    if missing or set(templates) - set(KINDS):
        raise ModgapError(f"{where}: templates need exactly the keys {list(KINDS)} (missing {missing})")
    for kind, template in templates.items():
        if not isinstance(template, str):
            raise ModgapError(f"{where}: template {kind!r} must be a string")
        if kind != "image" and TEXT_SLOT not in template:
            raise ModgapError(f"{where}: template {kind!r} has no {TEXT_SLOT} slot: {template!r}")
        if kind != "text" and template.count(token) != 1:
            raise ModgapError(f"{where}: template {kind!r} must hold the image token {token!r} once: {template!r}")
        if kind == "text" and token in template:
            raise ModgapError(f"{where}: template 'text' must not hold the image token {token!r}")
    return dict(templates)


def read_templates(path: str | os.PathLike) -> dict[str, str]:
    """``--templates FILE.json``: ``{"text": ..., "image": ..., "image_text": ...}`` (or a modgap_embedder.json
    holding them under ``templates``)."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ModgapError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    data = data.get("templates", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ModgapError(f"{path}: expected a JSON object of templates")
    return data


def default_templates(processor: Any) -> dict[str, str]:
    """UniME's instructions rendered through the model's chat template with a generation prompt (structured
    content first, as multimodal templates expect; plain text content for templates that take only strings);
    the bare instructions when the model has no chat template."""
    token = image_token(processor)
    out = {}
    for kind, instruction in INSTRUCTIONS.items():
        literal = instruction.replace("{image}", token)
        rendered = None
        if getattr(processor, "chat_template", None):
            text = instruction.replace("{image}\n", "")
            content: list[dict[str, str]] = [{"type": "image"}] if kind != "text" else []
            for messages in ([{"role": "user", "content": [*content, {"type": "text", "text": text}]}],
                             [{"role": "user", "content": literal}]):  # fmt: skip
                try:
                    candidate = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                except Exception:  # a template that cannot render this form: try the next one
                    continue
                slots = (TEXT_SLOT in candidate or kind == "image") and (token in candidate) == (kind != "text")
                if slots and "{'type'" not in candidate:  # a template that printed the content list is no use
                    rendered = candidate
                    break
        out[kind] = rendered or literal
    return out


class StockPrep:
    """Prompts (and images) through the model's own processor, padded on the right; picklable, so DataLoader
    workers run it."""

    def __init__(self, processor: Any, template: str, max_text_tokens: int | None):
        self.processor, self.template, self.max_text_tokens = processor, template, max_text_tokens

    def prompts(self, texts: list[str] | None, n: int) -> list[str]:
        if texts is None:
            return [self.template] * n
        tok = self.processor.tokenizer
        if self.max_text_tokens:  # the input text is cut, never the template around it
            texts = [tok.convert_tokens_to_string(tok.tokenize(t)[: self.max_text_tokens]) for t in texts]
        return [self.template.replace(TEXT_SLOT, t) for t in texts]

    def __call__(self, texts: list[str] | None = None, images: list[Image.Image] | None = None) -> Prepared:
        n = len(images) if images is not None else len(texts or [])
        tokenizer = self.processor.tokenizer
        side, tokenizer.padding_side = tokenizer.padding_side, "right"
        try:
            batch = self.processor(text=self.prompts(texts, n), images=images, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        return dict(batch)


class _TextPrep:
    def __init__(self, prep: StockPrep):
        self.prep = prep

    def __call__(self, texts: list[str]) -> Prepared:
        return self.prep(texts=texts)


class _ImagePrep:
    def __init__(self, prep: StockPrep):
        self.prep = prep

    def __call__(self, images: list[Image.Image]) -> Prepared:
        return self.prep(images=images)


def hidden_size(config: Any) -> int:
    """The embedding width of a stock multimodal LLM: its language model's hidden size."""
    return int(getattr(config, "text_config", config).hidden_size)


def load_stock(
    path: str | os.PathLike,
    templates: dict[str, str] | str | os.PathLike | None = None,
    *,
    online: bool = False,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, dict[str, str]]:
    """(processor, model in float32, checked templates) of a stock checkpoint; ``templates`` a dict, a JSON file,
    or None for the ``modgap_embedder.json`` beside the model, else the chat-template defaults."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    kwargs = load_kwargs([str(path)], online, trust_remote_code)
    try:
        processor = AutoProcessor.from_pretrained(str(path), **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise ModgapError(f"{path}: cannot load a stock multimodal LLM ({e})") from e
    if templates is None and (path / TEMPLATES_FILE).is_file():
        templates = path / TEMPLATES_FILE
    where = str(templates) if isinstance(templates, str | os.PathLike) else f"{path} (default templates)"
    if isinstance(templates, str | os.PathLike):
        templates = read_templates(templates)
    return processor, model, check_templates(templates or default_templates(processor), image_token(processor), where)


def pooled(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """UniME's embedding of a prepared batch (moved to the model's device): the last non-padding token's final
    hidden state, L2-normalised."""
    batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out = model(**batch, output_hidden_states=True, return_dict=True)
    last = last_token_states(out.hidden_states[-1], batch["attention_mask"]).float()
    return torch.nn.functional.normalize(last, dim=-1)


def text_beside_image(text: str) -> str | None:
    """An input text that comes with an image, its image marker dropped (the template places the image); None
    when nothing else is left."""
    return text.replace(MARKER, " ").strip() or None


def group_by_kind(texts: list[str | None], images: list[Any]) -> dict[str, list[int]]:
    """Positions of the inputs of each template kind (text, image, image_text), in order."""
    groups: dict[str, list[int]] = {}
    for i, (text, image) in enumerate(zip(texts, images, strict=True)):
        kind = "image_text" if text is not None and image is not None else "image" if image is not None else "text"
        groups.setdefault(kind, []).append(i)
    return groups


class StockEmbedder(Encoder):
    """A stock multimodal LLM behind the encoder interface (see the module docstring)."""

    prepares_image_batches = True

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        online: bool = False,
        trust_remote_code: bool = False,
        max_text_length: int | None = None,
        templates: dict[str, str] | str | os.PathLike | None = None,
        batch_size: int = 16,
    ):
        path = Path(path)
        self.device = torch.device(device)
        self.processor, self.model, self.templates = load_stock(
            path, templates, online=online, trust_remote_code=trust_remote_code
        )
        self.model.to(self.device).eval()
        self.max_text_length = max_text_length
        self.batch_size = batch_size
        self.name = f"embedder:{path}"
        self.revision = weights_revision(path)

    @property
    def dim(self) -> int:
        return hidden_size(self.model.config)

    def prep(self, kind: str) -> StockPrep:
        return StockPrep(self.processor, self.templates[kind], self.max_text_length)

    def text_preprocessor(self) -> _TextPrep:
        return _TextPrep(self.prep("text"))

    def image_preprocessor(self) -> _ImagePrep:
        return _ImagePrep(self.prep("image"))

    @torch.inference_mode()
    def embed(self, modality: str, batch: Prepared) -> torch.Tensor:
        del modality  # the prompt already says what the input is
        return pooled(self.model, batch).cpu()

    def embed_items(self, texts: list[str | None], images: list[Image.Image | None]) -> torch.Tensor:
        """Mixed inputs (text, image or both per item), each through its own template, in the given order."""
        out: list[torch.Tensor | None] = [None] * len(texts)
        # A marker in the text (MMEB's <|image_1|>, read as modgap's <image>) goes: the template places the image.
        texts = [t if t is None or im is None else text_beside_image(t) for t, im in zip(texts, images, strict=True)]
        for kind, rows in group_by_kind(texts, images).items():
            for s in range(0, len(rows), self.batch_size):
                part = rows[s : s + self.batch_size]
                batch = self.prep(kind)(
                    texts=[texts[i] for i in part] if kind != "image" else None,  # type: ignore[misc]
                    images=[images[i] for i in part] if kind != "text" else None,  # type: ignore[misc]
                )
                for i, v in zip(part, self.embed(IMAGE if kind != "text" else "text", batch), strict=True):
                    out[i] = v
        return torch.stack(out)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "templates": self.templates, "pooling": "last"}
