"""The training recipe for both ReVision stages, read top to bottom.

``pretrain``: LLM frozen, projector trained, visual inputs are (aligned) text embeddings.
``sft``: starts from a pretrained model; LLM trained fully or with LoRA, plus the projector; visual
inputs are image embeddings (or any mix of sources).

The engine is 🤗 Accelerate, so the same code runs on CPU, one GPU, DDP, FSDP and DeepSpeed (launch
with ``accelerate launch --config_file configs/...`` or ``torchrun``). Exact resume: the data order is
a function of (seed, epoch), checkpoints are taken at optimizer-step boundaries and hold the trainable
weights, optimizer, scheduler and RNG states, so a resumed run takes the same steps as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

from modgap.align.base import Aligner
from modgap.encoders.patches import patch_shape
from modgap.errors import ModgapError
from modgap.files import write_json
from modgap.mllm.config import TrainConfig, load_config
from modgap.mllm.data import batch_visual, build_training_set, collate, training_aligner
from modgap.mllm.model import VisionLanguageModel
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows
from modgap.store.store import EmbeddingStore
from modgap.training import (
    BAD_ROWS_FILE,
    check_finite_loss,
    epoch_batches,
    finish_run,
    record_settings,
    register_trainable_checkpointing,
    resume_checkpoint,
    save_checkpoint,
    start_run,
    step_generator,
    steps_per_epoch,
    tracker_config,
    train_lora,
)

MODEL_SUBDIR = "model"
CONFIG_FILE = "train_config.json"  # the run directory's recorded settings

__all__ = ["CONFIG_FILE", "MODEL_SUBDIR", "TrainConfig", "TrainResult", "load_config", "train"]


@dataclasses.dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    losses: list[float]
    tokens_per_second: float
    stopped_early: bool
    seconds: float = 0.0  # wall time of the optimizer steps taken by this call


def _set_trainable(model: VisionLanguageModel, cfg: TrainConfig) -> VisionLanguageModel:
    model.llm.requires_grad_(False)
    model.projector.requires_grad_(True)
    if cfg.tune == "full":
        model.llm.requires_grad_(True)
    elif cfg.tune == "lora":
        model.llm = train_lora(model.llm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return model


def _make_model(cfg: TrainConfig, stores: list[EmbeddingStore], aligner: Aligner | None) -> VisionLanguageModel:
    dims = {str(s.path): s.dim for s in stores}
    if len(set(dims.values())) > 1:
        raise ModgapError(f"embedding stores differ in dimension: {dims}")
    embed_dim = stores[0].dim
    patches = {str(s.path): patch_shape(s.manifest.encoder) for s in stores}
    if len(set(patches.values())) > 1:
        raise ModgapError(f"mixing stores of patch features and global embeddings (or patch shapes): {patches}")
    shape = patch_shape(stores[0].manifest.encoder)
    if shape is not None and aligner is not None:
        raise ModgapError("patch features are image-side tokens: train on them without an aligner")
    if cfg.init:
        model = VisionLanguageModel.load(cfg.init, online=cfg.online)
        if model.config.embed_dim != embed_dim:
            raise ModgapError(
                f"{cfg.init}: model reads {model.config.embed_dim}-d embeddings, the stores hold {embed_dim}-d ones"
            )
        if aligner is not None:
            model.aligner = aligner
            model.config.has_aligner = True
        if cfg.prompt:
            model.config.prompt = cfg.prompt
        return model
    assert cfg.llm is not None
    return VisionLanguageModel.build(
        cfg.llm,
        embed_dim,
        num_visual_tokens=shape[0] if shape else cfg.num_visual_tokens,
        projector=cfg.projector,
        token_mode="patch" if shape else cfg.token_mode,
        prompt=cfg.prompt,
        max_length=cfg.max_length,
        chat_template=cfg.chat_template,
        encoder=(stores[0].manifest.encoder or {}).get("name"),
        aligner=aligner,
        online=cfg.online,
        trust_remote_code=cfg.trust_remote_code,
        seed=cfg.seed,
    )


def train(cfg: TrainConfig, *, progress: ProgressFactory = silent) -> TrainResult:
    """Run one ReVision stage; ``progress`` draws the step bar with the loss and tokens/s (main process only)."""
    from transformers import get_cosine_schedule_with_warmup

    out = Path(cfg.out)
    settings = dataclasses.asdict(cfg)
    inputs = [*cfg.data, *cfg.embeddings, cfg.init, cfg.aligner, cfg.llm]
    accelerator = start_run(cfg, settings, CONFIG_FILE, seed=cfg.seed, grad_accum=cfg.grad_accum, inputs=inputs)
    main = accelerator.is_main_process

    # -- model and data -------------------------------------------------------------------------
    stores = [EmbeddingStore.open(p) for p in cfg.embeddings]
    model = _set_trainable(_make_model(cfg, stores, training_aligner(stores, cfg.aligner)), cfg)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    progress = progress if main else silent
    bad = BadRows(cfg.on_bad)
    data = build_training_set(
        list(zip(cfg.data, cfg.embeddings, strict=False)),
        model.tokenizer,
        model.config.num_visual_tokens,
        prompt=model.config.prompt,
        max_length=model.config.max_length,
        max_missing=cfg.max_missing,
        bad=bad,
        progress=progress,
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for r in data.reports:
            print(r.line(), file=sys.stderr)
        write_json(out / "data_report.json", [dataclasses.asdict(r) for r in data.reports])
        if bad.rows:
            bad.write(out / BAD_ROWS_FILE)
        record_settings(out, settings, CONFIG_FILE)

    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = steps_per_epoch(len(data), cfg.batch_size, world, cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * per_epoch

    # -- optimisation ---------------------------------------------------------------------------
    projector_params = [p for p in model.projector.parameters() if p.requires_grad]
    llm_params = [p for p in model.llm.parameters() if p.requires_grad]
    groups = [{"params": projector_params, "lr": cfg.projector_lr or cfg.lr}]
    if llm_params:
        groups.append({"params": llm_params, "lr": cfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped here once per optimizer step (Accelerate's wrapper would step it once per
    # process); it is checkpointed with the rest.
    accelerator.register_for_checkpointing(scheduler)
    register_trainable_checkpointing(accelerator)

    step, tokens_seen = 0, 0
    if cfg.resume and (found := resume_checkpoint(accelerator, out)):
        step, tokens_seen = found[0], found[1]["tokens"]

    log_with = cfg.report_to != "none"
    if log_with:
        accelerator.init_trackers("train", config=tracker_config(settings))
    unwrapped: VisionLanguageModel = accelerator.unwrap_model(model)
    pad_id = unwrapped.tokenizer.pad_token_id
    aligner = unwrapped.aligner

    # -- loop -----------------------------------------------------------------------------------
    losses: list[float] = []
    stop_at = min(total_steps, cfg.stop_after) if cfg.stop_after is not None else total_steps
    model.train()
    started, tokens_at_start = time.perf_counter(), tokens_seen
    last_loss = float("nan")
    with progress("training", total_steps, step) as advance:
        while step < stop_at:
            epoch = step // per_epoch
            batches = epoch_batches(len(data), cfg.batch_size, world, rank, seed=cfg.seed, epoch=epoch)
            for in_epoch in range(step % per_epoch, per_epoch):
                step_loss = torch.zeros((), device=accelerator.device)
                step_tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
                for micro in range(cfg.grad_accum):
                    indices = batches[in_epoch * cfg.grad_accum + micro]
                    batch = {k: v.to(accelerator.device) for k, v in collate(data, indices, pad_id).items()}
                    visual = batch_visual(
                        data,
                        indices,
                        aligner,
                        train=True,
                        noise_std=cfg.noise_std,
                        generator=step_generator(cfg.seed, step, micro, rank),
                        normalize=unwrapped.config.token_mode != "patch",
                    )
                    with accelerator.accumulate(model):
                        loss = model(
                            batch["input_ids"],
                            batch["attention_mask"],
                            visual.to(accelerator.device),
                            labels=batch["labels"],
                        ).loss
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and cfg.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad()
                    step_loss += loss.detach() / cfg.grad_accum
                    step_tokens += batch["attention_mask"].sum()
                scheduler.step()
                step += 1
                last_loss = accelerator.reduce(step_loss, "mean").item()
                check_finite_loss(last_loss, step)
                tokens_seen += int(accelerator.reduce(step_tokens, "sum").item())
                losses.append(last_loss)
                if log_with and (step % cfg.log_every == 0 or step == stop_at):
                    accelerator.log(
                        {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen}, step=step
                    )
                rate = (tokens_seen - tokens_at_start) / max(time.perf_counter() - started, 1e-9)
                advance(1, f"loss {last_loss:.4f} · {rate:,.0f} tok/s")
                if (cfg.save_every and step % cfg.save_every == 0) or step == stop_at:
                    save_checkpoint(accelerator, out, step, cfg.keep_checkpoints, epoch=epoch, tokens=tokens_seen)
                if step >= stop_at:
                    break
    elapsed = time.perf_counter() - started
    tps = (tokens_seen - tokens_at_start) / elapsed if elapsed > 0 else 0.0

    model_dir = out / MODEL_SUBDIR
    stopped_early = step < total_steps
    created_by = {"command": " ".join(sys.argv), "stage": cfg.stage, "steps": step, "train_config": settings}
    finish_run(accelerator, model, model_dir, save=not stopped_early, created_by=created_by)
    return TrainResult(model_dir, step, last_loss, losses, tps, stopped_early, elapsed)
