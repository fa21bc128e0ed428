"""The training recipe of both UniME stages, read top to bottom.

``distill`` (textual discriminative knowledge distillation): text only; the LM (LoRA or full) learns to
make its in-batch similarity distribution match the teacher's (:class:`DistillationKL`).
``tune`` (hard-negative-enhanced instruction tuning): query/positive(/negative) pairs; the LM and the
projector learn with InfoNCE over the batch's candidates, false negatives filtered and the k hardest kept
(:class:`HardNegativeInfoNCE`).

The batch is global. Under DDP each process embeds its share, the embeddings of all processes are gathered
(the local ones keep their gradient) and every process computes the loss of the whole batch; the loss is
multiplied by the number of processes, so DDP's gradient averaging yields exactly the gradient of the
global batch in one process. With ``grad_cache_chunk`` (GradCache, Gao et al. 2021) embeddings are first
computed without a graph, the loss's gradient with respect to them is taken, and the inputs are then
re-encoded chunk by chunk with that gradient pushed through: the same gradient as the plain batch, with
activation memory for one chunk. Resume is exact, as in ``modgap train``: data order from (seed, epoch),
checkpoints at step boundaries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modgap.distributed import average_gradients, gather_keep_grad
from modgap.embedder.config import EmbedderConfig, EmbedderTrainConfig
from modgap.embedder.data import Batch, PairSet, TextSet
from modgap.embedder.losses import DistillationKL, HardNegativeInfoNCE
from modgap.embedder.model import Embedder
from modgap.embedder.stock import is_stock_mllm
from modgap.embedder.stock_train import StockBatch, StockModel, StockPairSet, StockTextSet
from modgap.encoders.patches import patch_shape
from modgap.errors import ModgapError
from modgap.mllm.model import VisionLanguageModel
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows
from modgap.store.store import EmbeddingStore
from modgap.training import BAD_ROWS_FILE, is_sharded, record_settings, start_run, train_lora
from modgap.training.loop import run_loop

MODEL_SUBDIR = "model"
CONFIG_FILE = "embedder_train_config.json"


@dataclasses.dataclass
class EmbedderTrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    losses: list[float]
    samples_per_second: float
    stopped_early: bool
    seconds: float = 0.0
    model: Embedder | None = None  # the trained embedder in memory


def _make_embedder(cfg: EmbedderTrainConfig) -> Embedder:
    if cfg.init:
        embedder = Embedder.load(cfg.init)
    else:
        assert cfg.llm is not None
        embed_dim, shape, encoder = cfg.embed_dim, None, None
        if cfg.stage == "tune" and cfg.embeddings:  # the model reads what the image store holds
            store = EmbeddingStore.open(cfg.embeddings)
            embed_dim, shape = store.dim, patch_shape(store.manifest.encoder)
            encoder = (store.manifest.encoder or {}).get("name")
        assert embed_dim is not None
        vlm = VisionLanguageModel.build(
            cfg.llm,
            embed_dim,
            num_visual_tokens=shape[0] if shape else cfg.num_visual_tokens,
            token_mode="patch" if shape else "expand",
            encoder=encoder,
            online=cfg.online,
            trust_remote_code=cfg.trust_remote_code,
            seed=cfg.seed,
        )
        embedder = Embedder(vlm, EmbedderConfig())
    vlm = embedder.vlm
    vlm.requires_grad_(False)
    if cfg.stage == "tune":  # distill is text only: the projector never sees an input there
        vlm.projector.requires_grad_(True)
    if cfg.tune == "full":
        vlm.llm.requires_grad_(True)
        head, inputs = vlm.llm.get_output_embeddings(), vlm.llm.get_input_embeddings()
        if head is not None and head.weight is not inputs.weight:
            head.requires_grad_(False)  # the embedding is read before the LM head: it would get no gradient
    elif cfg.tune == "lora":
        vlm.llm = train_lora(vlm.llm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return embedder


def _make_stock(cfg: EmbedderTrainConfig) -> StockModel:
    """A stock 🤗 multimodal LLM, what of it trains set (see :mod:`modgap.embedder.stock_train`)."""
    assert cfg.init is not None
    if cfg.embeddings:
        raise ModgapError(f"{cfg.init} is a stock multimodal LLM: it reads image files (--image-root), not stores")
    model = StockModel(cfg.init, templates=cfg.templates, online=cfg.online, trust_remote_code=cfg.trust_remote_code)
    model.set_trainable(cfg.stage, cfg.tune, (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout))
    return model


# -- one step ------------------------------------------------------------------------------------


def encode(model: nn.Module, unwrapped: Embedder, batch: Batch, start: int, stop: int, device: Any) -> torch.Tensor:
    """Embeddings of prompts ``start:stop`` of the batch (through ``model``, the engine's wrapper)."""
    if isinstance(batch, StockBatch):  # raw inputs through the stock model's processor (images replayed too)
        return model(unwrapped.prepare(batch.items[start:stop]))
    inputs = {k: v.to(device) for k, v in unwrapped.collate(batch.prompts[start:stop]).items()}
    visual = None
    if batch.visual is not None:
        before = sum(batch.has_image[:start])
        n = sum(batch.has_image[start:stop])
        visual = batch.visual[before : before + n].to(device) if n else None
    return model(inputs["input_ids"], inputs["attention_mask"], visual)


class Objective:
    """The stage's loss over the global batch, from this process's embeddings (and teacher rows)."""

    def __init__(self, cfg: EmbedderTrainConfig, world: int):
        self.world = world
        self.stage = cfg.stage
        if cfg.stage == "distill":
            self.loss: nn.Module = DistillationKL(cfg.temperature, cfg.teacher_temperature)
        else:
            self.loss = HardNegativeInfoNCE(cfg.temperature, cfg.fn_margin, cfg.hard_negatives)

    def __call__(self, reps: torch.Tensor, batch: Batch) -> torch.Tensor:
        parts = [gather_keep_grad(p, self.world) for p in reps.split(batch.segments)]
        if self.stage == "distill":
            assert batch.teacher is not None
            teacher = gather_keep_grad(batch.teacher.to(reps.device), self.world)
            return self.loss(parts[0], parts[0], teacher, teacher)
        return self.loss(parts[0], torch.cat(parts[1:]))


def contrastive_step(
    model: nn.Module,
    unwrapped: Embedder,
    accelerator: Any,
    batch: Batch,
    objective: Objective,
    chunk: int | None,
) -> torch.Tensor:
    """Forward and backward of one global batch; returns the loss (detached). Gradients are those of the
    whole global batch (see the module docstring), with or without gradient caching.

    Under DDP the backward passes run without DDP's own synchronisation and the gradients are averaged once
    at the end: a process whose share has no image leaves the projector unused, which DDP's reducer would
    refuse, and gradient caching runs several backward passes per step.
    """
    from accelerate.utils import DistributedType

    device, world, n = accelerator.device, accelerator.num_processes, len(batch)
    ddp = accelerator.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if chunk is not None and chunk < n and is_sharded(accelerator):
        raise ModgapError("gradient caching runs under DDP or one process; with DeepSpeed/FSDP leave it off")
    quiet = accelerator.no_sync(model) if ddp else contextlib.nullcontext()
    if chunk is None or chunk >= n:
        with quiet:
            loss = objective(encode(model, unwrapped, batch, 0, n, device), batch)
            accelerator.backward(loss * world)
    else:
        bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
        rng_states = []
        with torch.no_grad():
            cached = []
            for s, e in bounds:
                rng_states.append(torch.get_rng_state())  # dropout must draw the same masks when re-encoding
                cached.append(encode(model, unwrapped, batch, s, e, device))
        reps = torch.cat(cached).detach().requires_grad_()
        loss = objective(reps, batch)
        (loss * world).backward()  # only to the embeddings: no parameter is touched
        grads = reps.grad
        with quiet:
            for (s, e), state in zip(bounds, rng_states, strict=True):
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(state)
                    part = encode(model, unwrapped, batch, s, e, device)
                    accelerator.backward((part * grads[s:e]).sum())
    if ddp:
        average_gradients(model, world)
    return loss.detach()


# -- the recipe ----------------------------------------------------------------------------------


def train(cfg: EmbedderTrainConfig, *, progress: ProgressFactory = silent) -> EmbedderTrainResult:
    """Run one embedder stage; ``progress`` draws the step bar (main process only)."""
    out = Path(cfg.out)  # type: ignore[arg-type]
    settings = dataclasses.asdict(cfg)
    inputs = [cfg.data, cfg.teacher_embeddings, cfg.embeddings, cfg.init, cfg.llm]
    accelerator = start_run(cfg, settings, CONFIG_FILE, seed=cfg.seed, inputs=inputs)
    main = accelerator.is_main_process

    # -- model and data -------------------------------------------------------------------------
    bad = BadRows(cfg.on_bad)
    assert cfg.data is not None
    stock = cfg.init is not None and is_stock_mllm(cfg.init)
    if not stock and (cfg.templates or cfg.image_root):
        raise ModgapError("--templates and --image-root apply to a stock multimodal LLM base (--init STOCK_DIR)")
    if stock and is_sharded(accelerator):  # its save holds the whole model in the process (one process or DDP)
        raise ModgapError("a stock multimodal LLM base trains in one process or under DDP, not DeepSpeed/FSDP (yet)")
    embedder: Any = _make_stock(cfg) if stock else _make_embedder(cfg)
    if cfg.gradient_checkpointing:
        llm = embedder.hf if stock else embedder.vlm.llm
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if stock and cfg.stage == "distill":
        assert cfg.teacher_embeddings is not None
        data: Any = StockTextSet(cfg.data, cfg.teacher_embeddings, bad)
    elif stock:
        data = StockPairSet(cfg.data, cfg.image_root, bad)
    elif cfg.stage == "distill":
        assert cfg.teacher_embeddings is not None
        data = TextSet(cfg.data, cfg.teacher_embeddings, embedder, bad)
    else:
        data = PairSet(cfg.data, cfg.embeddings, embedder, bad)
        if embedder.vlm.config.encoder is None and data.store_inputs is not None:
            # The image encoder of the stores, so that embedder:DIR can embed image files itself.
            embedder.vlm.config.encoder = (data.store_inputs.store.manifest.encoder or {}).get("name")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        record_settings(out, settings, CONFIG_FILE)
        if bad.rows:
            print(
                f"left out {len(bad.rows)} NaN/Inf/zero embedding(s); listed in {out / BAD_ROWS_FILE}", file=sys.stderr
            )
            bad.write(out / BAD_ROWS_FILE)

    params = [p for p in embedder.parameters() if p.requires_grad]
    if not params:
        raise ModgapError("nothing to train (check --tune)")
    objective = Objective(cfg, accelerator.num_processes)

    def step(model: nn.Module, indices: list[int], step: int, micro: int) -> tuple[torch.Tensor, int]:
        unwrapped = accelerator.unwrap_model(model)
        loss = contrastive_step(model, unwrapped, accelerator, data.batch(indices), objective, cfg.grad_cache_chunk)
        return loss, len(indices)  # every process computed the same global loss

    result = run_loop(
        accelerator, embedder, [{"params": params}], cfg, step,
        samples=len(data), settings=settings, label=cfg.stage, unit="samples", model_dir=out / MODEL_SUBDIR,
        created_by={"stage": cfg.stage, "settings": settings}, progress=progress,
    )  # fmt: skip
    return EmbedderTrainResult(result.model_dir, result.steps, result.final_loss, result.losses, result.per_second,
                               result.stopped_early, result.seconds, result.model)  # fmt: skip
