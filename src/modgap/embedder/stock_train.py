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

from modgap.embedder.data import pair_sides, read_teacher_texts, side_input
from modgap.embedder.sentence_transformers_files import write_sentence_transformers_files
from modgap.embedder.stock import (
    TEMPLATES_FILE,
    StockPrep,
    group_by_kind,
    hidden_size,
    load_stock,
    pooled,
    text_beside_image,
)
from modgap.encoders.base import open_images
from modgap.errors import ModgapError
from modgap.files import atomic_output_dir, read_rows, read_text, write_json, write_text
from modgap.store.checks import BadRows
from modgap.training.lora import train_lora

# Where each architecture keeps its projector (vision features -> LM embeddings), by module name.
PROJECTORS = ("multi_modal_projector", "connector", "merger")
Item = tuple[str | None, Path | None]  # (text, image file): an input of one of the three kinds


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
        self.base = str(path)
        record_file = Path(path) / TEMPLATES_FILE
        record = json.loads(read_text(record_file)) if record_file.is_file() else {}
        # A base modgap trained (stage 1's output) names the model it came from and the stages it has had.
        self.origin, self.stages = str(record.get("base", path)), list(record.get("stages", []))
        self.processor, self.hf, self.templates = load_stock(
            path, templates, online=online, trust_remote_code=trust_remote_code
        )
        self.max_text_tokens = max_text_tokens
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

    def prepare(self, items: list[Item]) -> dict[str, tuple[list[int], dict[str, Any]]]:
        """Processor inputs of ``items``, grouped by template kind: {kind: (positions, batch)}."""
        texts, images = [t for t, _ in items], [im for _, im in items]
        out = {}
        for kind, rows in group_by_kind(texts, images).items():
            prep = StockPrep(self.processor, self.templates[kind], self.max_text_tokens)
            texts_of = [texts[i] for i in rows] if kind != "image" else None
            pictures = open_images([images[i] for i in rows]) if kind != "text" else None  # type: ignore[misc]
            out[kind] = (rows, prep(texts=texts_of, images=pictures))  # type: ignore[arg-type]
        return out

    def forward(self, prepared: dict[str, tuple[list[int], dict[str, Any]]]) -> torch.Tensor:
        """Unit vectors of the prepared inputs, in the order of the items they were prepared from."""
        positions, parts = [], []
        for rows, batch in prepared.values():
            positions += rows
            parts.append(pooled(self.hf, batch))
        return torch.cat(parts)[torch.argsort(torch.tensor(positions, device=parts[0].device))]

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
            write_sentence_transformers_files(tmp, self.templates, hidden_size(model.config))
        if self.lora:  # merging changed the weights in place: the model in memory is now the merged one
            self.hf, self.lora = model, False


def model_card(base: str, stages: list[str], templates: dict[str, str], created_by: dict[str, Any]) -> str:
    from modgap import __version__

    settings = created_by.get("settings", {})
    keys = ("stage", "data", "tune", "lr", "batch_size", "temperature", "max_steps", "epochs", "seed", "lora_r",
            "lora_alpha", "hard_negatives")  # fmt: skip
    shown = {k: settings[k] for k in keys if k in settings}
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: image-text-to-text",
        "tags: [modgap, unime, embedding, sentence-transformers]",
        "---", "", "# A universal multimodal embedder (UniME recipe, trained with modgap)", "",
        f"- base model: `{base}`", f"- stages: {' + '.join(stages)} (this run: stage: `{settings.get('stage')}`, "
        f"{created_by.get('steps')} steps)",
        f"- data: `{settings.get('data')}`", f"- modgap {__version__}; command: `{created_by.get('command', '')}`", "",
        "Embedding: the final hidden state of the last non-padding token, L2-normalised, of the prompt below "
        "(`<sent>` is the text; the processor's image token the image).", "",
        "```json", json.dumps(templates, indent=2), "```", "", "Settings:", "", "```json",
        json.dumps(shown, indent=2), "```", "",
        "Loading: `AutoModelForImageTextToText` + `AutoProcessor` (then the prompt above, `output_hidden_states`, "
        "the last token, L2 norm), `modgap embed --encoder embedder:DIR`, or sentence-transformers (>= 5.4), "
        "whose files here render the same prompts:", "",
        "```python", "from sentence_transformers import SentenceTransformer", "",
        'model = SentenceTransformer("DIR")',
        'vectors = model.encode(["a text", pil_image, {"text": "a question", "image": pil_image}])', "```", "",
    ])  # fmt: skip


@dataclasses.dataclass
class StockBatch:
    items: list[Item]  # queries, then positives, then negatives (if any)
    segments: list[int]
    teacher: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items)


def _readable(path: Path, image: str, where: str, bad: BadRows) -> bool:
    """Whether the image file opens (its header); an error naming the row, or listed under ``--on-bad skip``."""
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
        self.sides = pair_sides(rows, path)
        self.items: dict[str, list[Item]] = {s: [] for s in self.sides}
        for n, row in enumerate(rows, 1):
            where = f"{path}: row {n}"
            got = {}
            for side in self.sides:
                text, image = side_input(row, side, where)
                if text is not None and image is not None:
                    text = text_beside_image(text)
                got[side] = (text, image)
            if all([image is None or _readable(self.root / image, image, where, bad) for _, image in got.values()]):
                for side, (text, image) in got.items():
                    self.items[side].append((text, None if image is None else self.root / image))
        if not len(self):
            raise ModgapError(f"{path}: no row left with readable images under {self.root}")

    def __len__(self) -> int:
        return len(self.items["qry"])

    def batch(self, indices: list[int]) -> StockBatch:
        return StockBatch([self.items[s][i] for s in self.sides for i in indices], [len(indices)] * len(self.sides))
