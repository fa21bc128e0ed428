"""A vision-language model used as an encoder: the last token's final hidden state under a summarising prompt.

Every input (a text, an image, an image with an instruction) is written into the template of its kind
(:data:`~modgap.embedder.config.DEFAULT_TEMPLATES`), rendered with the LM's chat template and a generation
prompt, and run through the LM's decoder; the embedding is the final hidden state at the last non-padding
position, L2-normalised. Position ids are computed from the attention mask, so a row's embedding does not
depend on the padding side or on the other rows of its batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modgap.embedder.config import EMBEDDER_FILE, TEXT_SLOT, EmbedderConfig
from modgap.errors import ModgapError
from modgap.mllm.chat import IMAGE_PLACEHOLDER, encode
from modgap.mllm.infer import resolve_model_dir
from modgap.mllm.model import VisionLanguageModel


@dataclass(frozen=True)
class Item:
    """One input: a text, an image (its visual embedding travels separately, in batch order), or both."""

    text: str | None = None
    image: bool = False

    @property
    def kind(self) -> str:
        if self.image:
            return "image_text" if self.text else "image"
        if self.text is None:
            raise ModgapError("an input needs a text, an image or both")
        return "text"


class PromptBuilder:
    """Inputs to prompt token ids, and prompts to a padded batch (picklable: runs in DataLoader workers)."""

    def __init__(self, tokenizer: Any, config: EmbedderConfig, num_visual_tokens: int):
        self.tokenizer, self.config, self.num_visual_tokens = tokenizer, config, num_visual_tokens

    def ids(self, item: Item) -> list[int]:
        """Token ids of one input's prompt (visual positions marked, as the VLM reads them)."""
        template = self.config.templates[item.kind]
        if item.text is not None:
            text = self._cut(item.text)
            if item.image and IMAGE_PLACEHOLDER in text:
                # The text marks where its image goes (MMEB's <|image_1|>): the template's own marker is dropped.
                template = template.replace(IMAGE_PLACEHOLDER, "", 1).lstrip()
            template = template.replace(TEXT_SLOT, text)
        messages = [{"role": "user", "content": template}]
        return encode(self.tokenizer, messages, self.num_visual_tokens, add_generation_prompt=True).input_ids

    def _cut(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.config.max_text_tokens:
            return text
        return self.tokenizer.decode(ids[: self.config.max_text_tokens])

    def collate(self, prompts: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` (any padding side gives the same vectors)."""
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts to a batch: the text preprocessor of the ``embedder:`` encoder."""
        return self.collate([self.ids(Item(text=t)) for t in texts])


def last_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last non-padding token (either padding side)."""
    width = attention_mask.shape[1]
    last = width - 1 - attention_mask.flip(1).int().argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


class Embedder(nn.Module):
    """``vlm`` (:class:`VisionLanguageModel`) + how its inputs become prompts and its states one vector."""

    def __init__(self, vlm: VisionLanguageModel, config: EmbedderConfig | None = None):
        super().__init__()
        self.vlm = vlm
        self.config = config or EmbedderConfig()

    # -- saving ---------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str | torch.device = "cpu", base_llm: str | None = None
    ) -> Embedder:
        """An embedder directory, or a plain modgap model directory (then with the default templates)."""
        path = resolve_model_dir(path)
        vlm = VisionLanguageModel.load(path, device=device, base_llm=base_llm)
        config = EmbedderConfig.load(path) if (path / EMBEDDER_FILE).is_file() else EmbedderConfig()
        return cls(vlm, config)

    def save(
        self,
        path: str | os.PathLike,
        created_by: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """The model directory (written whole), with the embedder settings beside the model's."""
        config = dataclasses.replace(self.config, created_by=created_by or self.config.created_by)
        vlm_state = None
        if state_dict is not None:
            vlm_state = {k.removeprefix("vlm."): v for k, v in state_dict.items() if k.startswith("vlm.")}
        return self.vlm.save(
            path, created_by=created_by, state_dict=vlm_state, extra_json={EMBEDDER_FILE: dataclasses.asdict(config)}
        )

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.vlm.tokenizer

    @property
    def prompts(self) -> PromptBuilder:
        return PromptBuilder(self.vlm.tokenizer, self.config, self.vlm.config.num_visual_tokens)

    def prompt_ids(self, item: Item) -> list[int]:
        return self.prompts.ids(item)

    def collate(self, prompts: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        return self.prompts.collate(prompts)

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, visual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, hidden) embeddings; ``visual`` holds one row per input with an image, in batch order."""
        embeds = self.vlm.embed_inputs(input_ids, visual)
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.vlm.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        ).last_hidden_state
        out = last_token_states(hidden, attention_mask).float()
        return F.normalize(out, dim=-1) if self.config.normalize else out

    @torch.no_grad()
    def embed(self, items: Sequence[Item], visual: torch.Tensor | None = None, *, batch_size: int = 64) -> torch.Tensor:
        """Embeddings (N, hidden) of ``items``, on the CPU; ``visual`` (rows as the VLM reads them, one per
        input with an image, in order)."""
        was_training = self.training
        self.eval()
        device = self.vlm.device
        outs, v_at = [], 0
        prompts = self.prompts
        for s in range(0, len(items), batch_size):
            part = items[s : s + batch_size]
            n_vis = sum(it.image for it in part)
            vis = None
            if n_vis:
                if visual is None or v_at + n_vis > len(visual):
                    raise ModgapError("fewer visual embeddings than inputs with an image")
                vis = visual[v_at : v_at + n_vis].to(device)
                v_at += n_vis
            batch = {k: v.to(device) for k, v in prompts.collate([prompts.ids(it) for it in part]).items()}
            outs.append(self(batch["input_ids"], batch["attention_mask"], vis).cpu())
        self.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0, self.vlm.config.hidden_size)

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        return self.embed([Item(text=t) for t in texts], batch_size=batch_size)

    def embed_images(
        self, visual: torch.Tensor, instructions: Sequence[str] | None = None, *, batch_size: int = 64
    ) -> torch.Tensor:
        """Images given as visual inputs (see :meth:`VisionLanguageModel.visual_inputs`), optionally each
        with an instruction."""
        texts = list(instructions) if instructions is not None else [None] * len(visual)
        return self.embed([Item(text=t, image=True) for t in texts], visual, batch_size=batch_size)
