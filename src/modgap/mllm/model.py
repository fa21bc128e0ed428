"""A causal LM that reads one global embedding as k visual tokens.

Built on an unmodified 🤗 ``AutoModelForCausalLM``: the projected visual tokens are written into the
input embeddings at the :data:`~modgap.mllm.chat.VISUAL_ID` positions and the LM runs on
``inputs_embeds``. Nothing of the LM's own code is copied or patched, so any current causal LM works.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from modgap.align.base import Aligner, load_aligner, normalize_rows
from modgap.errors import ModgapError
from modgap.files import atomic_output_dir
from modgap.hub import is_builtin, load_llm, load_tokenizer, portable_name
from modgap.mllm.chat import IGNORE, VISUAL_ID, caption_messages, encode, ensure_chat_template
from modgap.mllm.config import (
    ADAPTER_DIR,
    ALIGNER_DIR,
    CONFIG_FILE,
    LLM_DIR,
    PROJECTOR_FILE,
    TOKENIZER_DIR,
    MLLMConfig,
)
from modgap.mllm.projector import Projector


class VisionLanguageModel(nn.Module):
    """``llm`` (a 🤗 causal LM, or a peft model around one) + ``projector`` + the tokenizer and config."""

    def __init__(
        self, llm: nn.Module, projector: Projector, tokenizer: Any, config: MLLMConfig, aligner: Aligner | None = None
    ):
        super().__init__()
        self.llm = llm
        self.projector = projector
        self.tokenizer = tokenizer
        self.config = config
        self.aligner = aligner

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        llm_path: str,
        embed_dim: int,
        *,
        num_visual_tokens: int = 8,
        projector: str = "mlp",
        token_mode: str = "expand",
        prompt: str | None = None,
        max_length: int = 512,
        chat_template: str | None = None,
        encoder: str | None = None,
        aligner: Aligner | None = None,
        online: bool = False,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> VisionLanguageModel:
        """A fresh model: the base LM as saved, a projector initialised from ``seed``."""
        llm = load_llm(llm_path, online=online, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(llm_path, online=online, trust_remote_code=trust_remote_code)
        ensure_chat_template(tokenizer, chat_template)
        hidden = llm.get_input_embeddings().embedding_dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            proj = Projector(embed_dim, hidden, num_visual_tokens, projector, token_mode)
        config = MLLMConfig(
            base_llm=portable_name(llm_path),
            embed_dim=embed_dim,
            hidden_size=hidden,
            num_visual_tokens=num_visual_tokens,
            projector=projector,
            token_mode=token_mode,
            max_length=max_length,
            encoder=encoder,
            has_aligner=aligner is not None,
            trust_remote_code=trust_remote_code,
        )
        if prompt:
            config.prompt = prompt
        return cls(llm, proj, tokenizer, config, aligner)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        base_llm: str | None = None,
        online: bool = False,
        device: str | torch.device = "cpu",
        dtype: Any = None,
    ) -> VisionLanguageModel:
        """Load a saved model directory (``base_llm`` overrides the recorded base LM location)."""
        path = Path(path)
        config = MLLMConfig.load(path)
        needed = [PROJECTOR_FILE, TOKENIZER_DIR]
        needed += [LLM_DIR] if config.llm_weights == "llm" else [ADAPTER_DIR] if config.llm_weights == "adapter" else []
        needed += [ALIGNER_DIR] if config.has_aligner else []
        missing = [name for name in needed if not (path / name).exists()]
        if missing:
            raise ModgapError(f"{path}: incomplete model directory, missing {', '.join(missing)}")
        if base_llm:
            config.base_llm = base_llm
        remote = config.trust_remote_code
        if config.llm_weights == "llm":
            llm = load_llm(str(path / LLM_DIR), trust_remote_code=remote, dtype=dtype)
        else:
            if not online and not is_builtin(config.base_llm) and not Path(config.base_llm).is_dir():
                raise ModgapError(
                    f"{path}: base LM {config.base_llm} not found (moved? pass --base-llm with its new location)"
                )
            llm = load_llm(config.base_llm, online=online, trust_remote_code=remote, dtype=dtype)
            if config.llm_weights == "adapter":
                from peft import PeftModel

                llm = PeftModel.from_pretrained(llm, str(path / ADAPTER_DIR))
        tokenizer = load_tokenizer(str(path / TOKENIZER_DIR))
        proj = Projector(
            config.embed_dim, config.hidden_size, config.num_visual_tokens, config.projector, config.token_mode
        )
        proj.load_state_dict(load_file(str(path / PROJECTOR_FILE)))
        aligner = load_aligner(path / ALIGNER_DIR) if config.has_aligner else None
        model = cls(llm, proj, tokenizer, config, aligner)
        return model.to(device=device, dtype=dtype) if dtype else model.to(device)

    def save(
        self,
        path: str | Path,
        created_by: dict[str, Any] | None = None,
        state_dict: dict[str, torch.Tensor] | None = None,
        extra_json: dict[str, Any] | None = None,
    ) -> Path:
        """Write the model directory atomically (LLM weights only if they were trained).

        ``extra_json``: file name -> JSON content written inside it (e.g. an embedder's settings).

        ``state_dict``: the full state gathered by the engine when parameters are sharded (DeepSpeed
        ZeRO-3, FSDP; see :func:`modgap.training.full_state_dict`); its ``llm.``/``projector.`` entries are
        written instead of the module's own, which on a sharded engine are only this process's shards.
        """
        llm = self.llm
        llm_state = projector_state = None
        if state_dict is not None:
            llm_state = _sub_state(state_dict, "llm.")
            projector_state = _sub_state(state_dict, "projector.")
            if projector_state is None:
                raise ModgapError("the given state_dict has no projector.* entries (not this model's state?)")
        config = MLLMConfig(**{**self.config.__dict__})
        if created_by is not None:
            config.created_by = created_by
        with atomic_output_dir(path, overwrite=True, markers=(CONFIG_FILE,)) as tmp:
            llm_kwargs = {} if llm_state is None else {"state_dict": llm_state}
            if _is_peft(llm) and config.llm_weights == "llm":
                # LoRA over an LM whose own weights were trained before: an adapter alone would be applied to
                # the original base when loaded, so the merged weights are saved instead.
                if llm_state is not None:
                    raise ModgapError("LoRA over a fully tuned LM cannot be merged from a sharded state; use DDP")
                copy.deepcopy(llm).merge_and_unload().save_pretrained(str(tmp / LLM_DIR))
            elif _is_peft(llm):
                llm.save_pretrained(str(tmp / ADAPTER_DIR), **llm_kwargs)
                config.llm_weights = "adapter"
            elif any(p.requires_grad for p in llm.parameters()) or config.llm_weights == "llm":
                llm.save_pretrained(str(tmp / LLM_DIR), **llm_kwargs)
                config.llm_weights = "llm"
            projector = projector_state if projector_state is not None else self.projector.state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in projector.items()}, str(tmp / PROJECTOR_FILE))
            self.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
            if self.aligner is not None:
                self.aligner.save(tmp / ALIGNER_DIR)
            config.has_aligner = self.aligner is not None
            config.save(tmp)
            for name, content in (extra_json or {}).items():
                (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        self.config = config
        return Path(path)

    # -- forward --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def embed_inputs(self, input_ids: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the projected ``visual`` written at the VISUAL_ID positions: one row of
        ``visual`` per sample that has visual positions, in batch order (samples without any are text only)."""
        where = input_ids == VISUAL_ID
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(where, 0))
        k = self.config.num_visual_tokens
        per_row = where.sum(1)
        if visual is None:
            if where.any():
                raise ModgapError("input has visual positions but no visual embeddings were given")
            return embeds
        with_visual = per_row > 0
        if not bool((per_row[with_visual] == k).all()):
            raise ModgapError(f"each sample with an image needs exactly {k} visual positions (got {per_row.tolist()})")
        if int(with_visual.sum()) != visual.shape[0]:
            raise ModgapError(f"{int(with_visual.sum())} samples with an image but {visual.shape[0]} visual embeddings")
        tokens = self.projector(visual.to(self.projector.first.weight.dtype)).to(embeds.dtype)
        return embeds.masked_scatter(where.unsqueeze(-1), tokens.reshape(-1, tokens.shape[-1]))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual: torch.Tensor | None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        embeds = self.embed_inputs(input_ids, visual)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False)

    # -- visual inputs --------------------------------------------------------------------------
    def visual_inputs(self, x: Any, modality: str, *, aligned: bool = False) -> torch.Tensor:
        """Embeddings as the model reads them at inference: text through the aligner, images through
        the aligner's target transform (C3 centres images), both L2-normalised; ``aligned`` rows (from a
        store the aligner wrote) as they are."""
        return visual_view(x, modality, self.aligner, aligned=aligned, normalize=self.config.token_mode != "patch")

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        visual: torch.Tensor,
        prompts: str | list[str] | None = None,
        *,
        max_new_tokens: int = 48,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> list[str]:
        """Replies for (already prepared) visual embeddings (B, D); one prompt or one per row. With
        ``batch_size``, rows are generated that many at a time (each batch starts from ``seed``)."""
        n = visual.shape[0]
        if prompts is None or isinstance(prompts, str):
            prompts = [prompts or self.config.prompt] * n
        if len(prompts) != n:
            raise ModgapError(f"{len(prompts)} prompts for {n} embeddings")
        if batch_size is not None and n > batch_size:
            options = dict(
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=do_sample,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
            return [
                reply
                for s in range(0, n, batch_size)
                for reply in self.generate(visual[s : s + batch_size], prompts[s : s + batch_size], **options)
            ]
        seqs = [
            encode(
                self.tokenizer, caption_messages(None, p), self.config.num_visual_tokens, add_generation_prompt=True
            ).input_ids
            for p in prompts
        ]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: every row's reply starts at the same position
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        device = self.device
        embeds = self.embed_inputs(ids.to(device), visual.to(device))
        if seed is not None:
            torch.manual_seed(seed)
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def visual_view(
    x: Any,
    modality: str,
    aligner: Aligner | None,
    *,
    aligned: bool = False,
    train: bool = False,
    generator: torch.Generator | None = None,
    noise_std: float = 0.0,
    normalize: bool = True,
) -> torch.Tensor:
    """What the projector sees of embeddings ``x`` from a ``modality`` store.

    ``normalize=False`` (patch features, read by a ``patch`` projector): the rows as they are; no aligner.

    Raw text goes through the aligner (its train-time view when ``train``: C3 and CapDec add fresh
    noise); images through the aligner's target transform. ``aligned`` rows were written by that aligner
    (``modgap align apply``) and are kept as they are (mean shift's output is not unit-norm on purpose),
    plus the aligner's train-time noise when ``train``. ``noise_std`` adds Gaussian noise (then
    renormalises) on top, during training only.
    """
    from modgap.store.store import as_cpu_tensor

    x = as_cpu_tensor(x).float() if not isinstance(x, torch.Tensor) else x.float()
    if not normalize:
        if aligner is not None or aligned:
            raise ModgapError("patch features are not aligned: train on them without an aligner")
        return x
    if aligned:
        if aligner is None:
            raise ModgapError("aligned rows need the aligner that wrote them")
        out = aligner.train_noise(x, generator) if train else x
    elif aligner is None:
        out = normalize_rows(x)
    elif modality == "text":
        out = aligner.train_transform(x, generator) if train else aligner.transform(x)
    else:
        out = aligner.transform_target(x)
    if train and noise_std > 0:
        out = normalize_rows(out + noise_std * torch.randn(out.shape, generator=generator, dtype=out.dtype))
    return out


def _sub_state(state: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    if state is None:
        return None
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or None


def _is_peft(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, PeftModel)


__all__ = ["IGNORE", "VisionLanguageModel", "visual_view"]
