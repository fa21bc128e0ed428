"""UniME's two stages on a stock 🤗 multimodal LLM (``embedder distill|tune --init STOCK_DIR``): the parts the
recipe in :mod:`modgap.embedder.train` swaps in when its base is a stock checkpoint.

The model reads raw images through its own processor and vision tower. Stage 1 (``distill``) tunes only the
language model, on text; stage 2 (``tune``) tunes the language model (LoRA or full) and the projector, the
vision tower frozen. Inputs are grouped by template kind (text, image, image + text), each group through the
processor and the model, and the embedding is the last non-padding token's final hidden state, L2-normalised
(:mod:`modgap.embedder.stock`). The trained ``OUT/model`` is a stock checkpoint: LoRA merged, safetensors,
processor and chat template, plus ``modgap_embedder.json`` (templates, pooling) and a model card.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from modgap.embedder.stock import (
    MARKER,
    TEMPLATES_FILE,
    StockPrep,
    check_templates,
    default_templates,
    image_token,
    last_token_states,
    read_templates,
)
from modgap.encoders.base import open_images
from modgap.errors import ModgapError
from modgap.eval.mmeb import mmeb_text
from modgap.files import atomic_output_dir, read_rows, read_text, write_json, write_text
from modgap.hub import load_kwargs
from modgap.store.checks import BadRows
from modgap.training.lora import train_lora

# Where each architecture keeps its projector (vision features -> LM embeddings), by module name.
PROJECTORS = ("multi_modal_projector", "connector", "merger")
Item = tuple[str | None, str | None]  # (text, image path): an input of one of the three kinds


def _kind(text: str | None, image: str | None) -> str:
    return "image_text" if text is not None and image is not None else "image" if image is not None else "text"


class StockModel(nn.Module):
    """A stock multimodal LLM as a trainable embedder: ``forward(batch)`` gives unit vectors."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        templates: str | os.PathLike | None = None,
        max_text_tokens: int | None = 128,
        online: bool = False,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.base = str(path)
        kwargs = load_kwargs([self.base], online, trust_remote_code)
        try:
            self.processor = AutoProcessor.from_pretrained(self.base, **kwargs)
            self.hf = AutoModelForImageTextToText.from_pretrained(self.base, dtype=torch.float32, **kwargs)
        except (OSError, ValueError) as e:
            raise ModgapError(f"{path}: cannot load a stock multimodal LLM ({e})") from e
        record_file = Path(path) / TEMPLATES_FILE
        record = json.loads(read_text(record_file)) if record_file.is_file() else {}
        # A base modgap trained (stage 1's output) names the model it came from and the stages it has had.
        self.origin, self.stages = str(record.get("base", path)), list(record.get("stages", []))
        if templates is None and record_file.is_file():
            templates = record_file
        where = str(templates) if templates is not None else f"{path} (default templates)"
        chosen = read_templates(templates) if templates is not None else default_templates(self.processor)
        self.templates = check_templates(chosen, image_token(self.processor), where)
        self.max_text_tokens = max_text_tokens
        self.image_root = Path(".")  # where the data's image paths start (the tune data sets it)
        self.lora = False

    def decoder_prefix(self) -> str:
        decoder = self.hf.get_decoder()
        return next(name for name, module in self.hf.named_modules() if module is decoder)

    def set_trainable(self, stage: str, tune: str, lora: tuple[int, int, float]) -> None:
        """Everything frozen, then the language model (LoRA or full) and, for ``tune``, the projector."""
        self.requires_grad_(False)
        prefix = self.decoder_prefix()
        if tune == "full":
            self.hf.get_decoder().requires_grad_(True)
        elif tune == "lora":
            linears = [n for n, m in self.hf.named_modules() if n.startswith(prefix + ".") and isinstance(m, nn.Linear)]
            self.hf = train_lora(self.hf, *lora, target_modules=linears)
            self.lora = True
        if stage == "tune":
            projectors = [m for n, m in self.hf.named_modules() if n.rsplit(".", 1)[-1] in PROJECTORS]
            if not projectors and tune == "projector":
                raise ModgapError(f"{self.base}: no projector module found ({', '.join(PROJECTORS)})")
            for m in projectors:
                m.requires_grad_(True)

    def prepare(self, items: list[Item], image_root: Path) -> dict[str, Any]:
        """Processor inputs of ``items``, grouped by kind: {kind: (positions, batch)}."""
        groups: dict[str, list[int]] = {}
        for i, (text, image) in enumerate(items):
            groups.setdefault(_kind(text, image), []).append(i)
        out = {}
        for kind, rows in groups.items():
            prep = StockPrep(self.processor, self.templates[kind], self.max_text_tokens)
            texts = [items[i][0] for i in rows] if kind != "image" else None
            images = open_images([image_root / str(items[i][1]) for i in rows]) if kind != "text" else None
            out[kind] = (rows, prep(texts=texts, images=images))  # type: ignore[arg-type]
        return out

    def forward(self, prepared: dict[str, Any]) -> torch.Tensor:
        device = next(self.parameters()).device
        n = sum(len(rows) for rows, _ in prepared.values())
        parts: list[tuple[list[int], torch.Tensor]] = []
        for rows, batch in prepared.values():
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            hidden = self.hf(**batch, output_hidden_states=True, return_dict=True).hidden_states[-1]
            pooled = last_token_states(hidden, batch["attention_mask"]).float()
            parts.append((rows, nn.functional.normalize(pooled, dim=-1)))
        order = torch.tensor([r for rows, _ in parts for r in rows], device=device)
        stacked = torch.cat([v for _, v in parts])
        return stacked[torch.argsort(order)] if n else stacked

    def save(self, model_dir: str | os.PathLike, *, created_by: dict[str, Any], state_dict: Any = None) -> None:
        """A stock checkpoint that ``AutoModelForImageTextToText`` + ``AutoProcessor`` load (see the module
        docstring), written whole or not at all."""
        del state_dict  # one process or DDP: the full model is here (the recipe refuses DeepSpeed/FSDP on this path)
        model = self.hf.merge_and_unload() if self.lora else self.hf
        with atomic_output_dir(model_dir, overwrite=True, markers=(TEMPLATES_FILE,)) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.processor.save_pretrained(tmp)
            stages = [*self.stages, created_by.get("stage")]
            record = {"method": "unime", "templates": self.templates, "pooling": "last", "normalize": True,
                      "base": self.origin, "stages": stages, "created_by": created_by}  # fmt: skip
            write_json(Path(tmp) / TEMPLATES_FILE, record)
            write_text(Path(tmp) / "README.md", model_card(self.origin, stages, self.templates, created_by))
        if self.lora:  # back to training form (merging changed the weights in place; the run is over)
            self.hf = model


def model_card(base: str, stages: list[str], templates: dict[str, str], created_by: dict[str, Any]) -> str:
    from modgap import __version__

    settings = created_by.get("settings", {})
    keys = ("stage", "data", "tune", "lr", "batch_size", "temperature", "max_steps", "epochs", "seed", "lora_r",
            "lora_alpha", "hard_negatives")  # fmt: skip
    shown = {k: settings[k] for k in keys if k in settings}
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: image-text-to-text", "tags: [modgap, unime, embedding]",
        "---", "", "# A universal multimodal embedder (UniME recipe, trained with modgap)", "",
        f"- base model: `{base}`", f"- stages: {' + '.join(stages)} (this run: stage: `{settings.get('stage')}`, "
        f"{created_by.get('steps')} steps)",
        f"- data: `{settings.get('data')}`", f"- modgap {__version__}; command: `{created_by.get('command', '')}`", "",
        "Embedding: the final hidden state of the last non-padding token, L2-normalised, of the prompt below "
        "(`<sent>` is the text; the processor's image token the image).", "",
        "```json", json.dumps(templates, indent=2), "```", "", "Settings:", "", "```json",
        json.dumps(shown, indent=2), "```", "",
    ])  # fmt: skip


@dataclasses.dataclass
class StockBatch:
    items: list[Item]  # queries, then positives, then negatives (if any)
    segments: list[int]
    teacher: torch.Tensor | None = None


def _check_image(root: Path, image: str, where: str, bad: BadRows) -> bool:
    """Whether the image file opens (its header); an error naming the row, or listed under ``--on-bad skip``."""
    path = root / image
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 (reading the header is the check)
        return True
    except (OSError, ValueError) as e:
        if bad.on_bad == "error":
            raise ModgapError(f"{where}: image {image!r} cannot be read ({path}: {e})") from e
        bad.add([{"where": where, "id": image, "reason": f"cannot read image: {e}"}])
        return False


class StockTextSet:
    """Stage 1 on a stock base: texts and their teacher embeddings."""

    def __init__(self, path: str | os.PathLike, teacher: str | os.PathLike, bad: BadRows):
        from modgap.embedder.data import read_teacher_texts

        self.ids, self.texts, self.teacher = read_teacher_texts(path, teacher, bad)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: list[int]) -> StockBatch:
        return StockBatch([(self.texts[i], None) for i in indices], [len(indices)], self.teacher[indices])


class StockPairSet:
    """Stage 2 on a stock base: MMEB's training layout, images as files under ``image_root``."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None, bad: BadRows):
        rows = read_rows(path, what="pairs file")
        if not rows:
            raise ModgapError(f"{path}: no rows")
        self.root = Path(image_root) if image_root else Path(path).parent
        self.sides = ["qry", "pos"]
        if any(r.get("neg_text") or r.get("neg_image_path") for r in rows):
            self.sides.append("neg")
        self.items: dict[str, list[Item]] = {s: [] for s in self.sides}
        for n, row in enumerate(rows, 1):
            where = f"{path}: row {n}"
            got = {}
            for side in self.sides:
                text = mmeb_text(row.get("qry" if side == "qry" else f"{side}_text"))
                image = row.get(f"{side}_image_path") or None
                if text is not None and image is not None:  # the template places the image: the marker goes
                    text = text.replace(MARKER, " ").strip() or None
                if text is None and image is None:
                    raise ModgapError(f"{where} has neither a {side} text nor a {side} image")
                got[side] = (text, None if image is None else str(image))
            if all([im is None or _check_image(self.root, im, where, bad) for _, im in got.values()]):
                for side, item in got.items():
                    self.items[side].append(item)
        if not len(self):
            raise ModgapError(f"{path}: no row left with readable images under {self.root}")

    def __len__(self) -> int:
        return len(self.items["qry"])

    def batch(self, indices: list[int]) -> StockBatch:
        return StockBatch([self.items[s][i] for s in self.sides for i in indices], [len(indices)] * len(self.sides))
