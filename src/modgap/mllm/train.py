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
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from modgap.align.base import load_aligner
from modgap.errors import ModgapError
from modgap.mllm.data import batch_visual, build_training_set, collate, epoch_batches
from modgap.mllm.model import VisionLanguageModel
from modgap.progress import rich_progress, silent
from modgap.store.store import EmbeddingStore

MODEL_SUBDIR = "model"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "train_config.json"
# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = {"resume", "stop_after", "save_every", "keep_checkpoints", "log_every", "report_to", "overwrite"}


@dataclasses.dataclass
class TrainConfig:
    stage: str  # "pretrain" or "sft"
    out: str
    data: list[str]
    embeddings: list[str]
    llm: str | None = None  # base causal LM (a new model; default builtin:tiny-lm); or
    init: str | None = None  # a modgap model directory to start from (sft: the pretrained one)
    aligner: str | None = None  # applied to text stores (and its target view to image stores)
    num_visual_tokens: int = 8
    projector: str = "mlp"
    token_mode: str = "expand"
    prompt: str | None = None
    chat_template: str | None = None
    max_length: int = 512
    max_missing: float = 0.01
    noise_std: float = 0.0
    tune: str | None = None  # "projector" | "full" | "lora"; default: projector for pretrain, full for sft
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8  # per process
    grad_accum: int = 1
    lr: float | None = None  # default: 1e-3 pretrain, 2e-5 sft
    projector_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many optimizer steps
    log_every: int = 10
    report_to: str = "tensorboard"  # tensorboard | wandb | none
    online: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.stage not in ("pretrain", "sft"):
            raise ModgapError(f"unknown stage {self.stage!r}")
        if len(self.data) != len(self.embeddings) or not self.data:
            raise ModgapError("give one --embeddings store per --data file (in the same order)")
        if self.llm is not None and self.init is not None:
            raise ModgapError("give either --llm (a base causal LM) or --init (a modgap model directory), not both")
        if self.llm is None and self.init is None:
            self.llm = "builtin:tiny-lm"  # the built-in world's LM: everything runs offline out of the box
        if self.tune is None:
            self.tune = "projector" if self.stage == "pretrain" else "full"
        if self.tune not in ("projector", "full", "lora"):
            raise ModgapError(f"unknown --tune {self.tune!r} (projector, full or lora)")
        if self.lr is None:
            self.lr = 1e-3 if self.stage == "pretrain" else 2e-5
        for name in ("batch_size", "grad_accum", "epochs", "num_visual_tokens"):
            if getattr(self, name) < 1:
                raise ModgapError(f"--{name.replace('_', '-')} must be at least 1")


@dataclasses.dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    losses: list[float]
    tokens_per_second: float
    stopped_early: bool
    seconds: float = 0.0  # wall time of the optimizer steps taken by this call


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (out / CHECKPOINTS).glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _check_output(cfg: TrainConfig, out: Path) -> None:
    saved = out / CONFIG_FILE
    if cfg.resume:
        if not saved.is_file():
            return  # nothing to resume: start from scratch
        before = json.loads(saved.read_text())
        now = dataclasses.asdict(cfg)
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            raise ModgapError(
                f"{out}: cannot resume, settings differ from the run being resumed: "
                + ", ".join(f"{k} ({before.get(k)!r} -> {now[k]!r})" for k in changed)
            )
    elif out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ModgapError(f"{out}: already exists (pass --resume to continue it or --overwrite to start over)")


def _mixed_precision(setting: str) -> str:
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return setting


def _set_trainable(model: VisionLanguageModel, cfg: TrainConfig) -> VisionLanguageModel:
    model.llm.requires_grad_(False)
    model.projector.requires_grad_(True)
    if cfg.tune == "full":
        model.llm.requires_grad_(True)
    elif cfg.tune == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(model.llm, PeftModel):
            for name, p in model.llm.named_parameters():
                p.requires_grad_("lora_" in name)
        else:
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            )
            model.llm = get_peft_model(model.llm, lora)
    return model


def _make_model(cfg: TrainConfig, embed_dim: int) -> VisionLanguageModel:
    aligner = load_aligner(cfg.aligner) if cfg.aligner else None
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
    encoder = EmbeddingStore.open(cfg.embeddings[0]).manifest.encoder
    return VisionLanguageModel.build(
        cfg.llm,
        embed_dim,
        num_visual_tokens=cfg.num_visual_tokens,
        projector=cfg.projector,
        token_mode=cfg.token_mode,
        prompt=cfg.prompt,
        max_length=cfg.max_length,
        chat_template=cfg.chat_template,
        encoder=(encoder or {}).get("name"),
        aligner=aligner,
        online=cfg.online,
        trust_remote_code=cfg.trust_remote_code,
        seed=cfg.seed,
    )


def _embed_dim(cfg: TrainConfig) -> int:
    dims = {p: EmbeddingStore.open(p).dim for p in cfg.embeddings}
    if len(set(dims.values())) > 1:
        raise ModgapError(f"embedding stores differ in dimension: {dims}")
    return next(iter(dims.values()))


def _noise_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    # Train-time noise is a function of (seed, step, micro-batch, rank): resumed runs draw the same noise.
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + micro) * 131 + rank)


def train(cfg: TrainConfig, *, show_progress: bool = True) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from transformers import get_cosine_schedule_with_warmup

    out = Path(cfg.out)
    _check_output(cfg, out)
    mp = _mixed_precision(cfg.mixed_precision)
    log_with = None if cfg.report_to == "none" else cfg.report_to
    accelerator = Accelerator(
        # Without a GPU, Accelerate only joins a torchrun/accelerate-launch process group when told it is on CPU.
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=mp,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    main = accelerator.is_main_process
    if main and cfg.overwrite and not cfg.resume and out.exists():
        shutil.rmtree(out)
    accelerator.wait_for_everyone()
    set_seed(cfg.seed)

    # -- model and data -------------------------------------------------------------------------
    model = _set_trainable(_make_model(cfg, _embed_dim(cfg)), cfg)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    progress = rich_progress(unit="rows") if (show_progress and main) else silent
    data = build_training_set(
        list(zip(cfg.data, cfg.embeddings, strict=False)),
        model.tokenizer,
        model.config.num_visual_tokens,
        prompt=model.config.prompt,
        max_length=model.config.max_length,
        max_missing=cfg.max_missing,
        progress=progress,
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for r in data.reports:
            print(r.line(), file=sys.stderr)
        from modgap.atomic import write_text

        write_text(out / "data_report.json", json.dumps([dataclasses.asdict(r) for r in data.reports], indent=2))
        write_text(out / CONFIG_FILE, json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = len(data) // (cfg.batch_size * world)  # epoch_batches drops the last partial batch
    steps_per_epoch = micro_per_epoch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ModgapError(
            f"{len(data)} samples are fewer than one optimizer step needs "
            f"(batch {cfg.batch_size} x {world} processes x {cfg.grad_accum} accumulation)"
        )
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

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
    _register_trainable_checkpointing(accelerator)

    step, tokens_seen = 0, 0
    if cfg.resume and (found := _checkpoints(out)):
        step, path = found[-1]
        accelerator.load_state(str(path))
        tokens_seen = json.loads((path / STATE_FILE).read_text())["tokens"]
        if main:
            print(f"resuming from {path} (step {step} of {total_steps})", file=sys.stderr)

    if log_with:
        accelerator.init_trackers(
            "train",
            config={
                k: (v if isinstance(v, int | float | str | bool) else str(v))
                for k, v in dataclasses.asdict(cfg).items()
            },
        )
    unwrapped: VisionLanguageModel = accelerator.unwrap_model(model)
    pad_id = unwrapped.tokenizer.pad_token_id
    aligner = unwrapped.aligner

    # -- loop -----------------------------------------------------------------------------------
    losses: list[float] = []
    stop_at = min(total_steps, cfg.stop_after) if cfg.stop_after is not None else total_steps
    model.train()
    started, tokens_at_start = time.perf_counter(), tokens_seen
    bar = _TrainBar(total_steps, step) if (show_progress and main) else None
    last_loss = float("nan")
    while step < stop_at:
        epoch = step // steps_per_epoch
        batches = epoch_batches(len(data), cfg.batch_size, world, rank, seed=cfg.seed, epoch=epoch)
        for in_epoch in range(step % steps_per_epoch, steps_per_epoch):
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
                    generator=_noise_generator(cfg.seed, step, micro, rank),
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
            tokens_seen += int(accelerator.reduce(step_tokens, "sum").item())
            losses.append(last_loss)
            if log_with and (step % cfg.log_every == 0 or step == stop_at):
                accelerator.log({"loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen}, step=step)
            if bar:
                elapsed = time.perf_counter() - started
                bar.update(step, last_loss, (tokens_seen - tokens_at_start) / max(elapsed, 1e-9))
            if (cfg.save_every and step % cfg.save_every == 0) or step == stop_at:
                _save_checkpoint(accelerator, out, step, epoch, tokens_seen, cfg.keep_checkpoints)
            if step >= stop_at:
                break
    if bar:
        bar.close()
    elapsed = time.perf_counter() - started
    tps = (tokens_seen - tokens_at_start) / elapsed if elapsed > 0 else 0.0

    accelerator.wait_for_everyone()
    model_dir = out / MODEL_SUBDIR
    stopped_early = step < total_steps
    if not stopped_early:
        from accelerate.utils import DistributedType

        # Sharded engines gather the full state (a collective: every process takes part).
        sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        full_state = accelerator.get_state_dict(model) if sharded else None
        if main:
            accelerator.unwrap_model(model).save(
                model_dir,
                created_by={
                    "command": " ".join(sys.argv),
                    "stage": cfg.stage,
                    "steps": step,
                    "train_config": dataclasses.asdict(cfg),
                },
                state_dict=full_state,
            )
    accelerator.wait_for_everyone()
    if log_with:
        accelerator.end_training()
    return TrainResult(model_dir, step, last_loss, losses, tps, stopped_early, elapsed)


def _register_trainable_checkpointing(accelerator: Any) -> None:
    """Checkpoint only the trainable parameters (a frozen 7B LLM is not copied into every checkpoint).
    DeepSpeed and FSDP keep their own sharded checkpoint formats."""
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, m in enumerate(models):
            if i < len(weights):
                weights[i] = {
                    n: p.detach().cpu() for n, p in accelerator.unwrap_model(m).named_parameters() if p.requires_grad
                }

    def load_hook(models: list, input_dir: str) -> None:
        while models:
            m = accelerator.unwrap_model(models.pop(0))
            state = load_file(os.path.join(input_dir, "model.safetensors"))
            result = m.load_state_dict(state, strict=False)
            trainable = {n for n, p in m.named_parameters() if p.requires_grad}
            missing = trainable & set(result.missing_keys)
            if missing or result.unexpected_keys:
                raise ModgapError(
                    f"{input_dir}: checkpoint does not match the model (missing {sorted(missing)[:5]}, "
                    f"unexpected {result.unexpected_keys[:5]})"
                )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator: Any, out: Path, step: int, epoch: int, tokens: int, keep: int) -> None:
    """Written under a temporary name, renamed when every process has written its part."""
    from modgap.atomic import write_text

    final = out / CHECKPOINTS / f"step-{step}"
    tmp = out / CHECKPOINTS / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text(tmp / STATE_FILE, json.dumps({"step": step, "epoch": epoch, "tokens": tokens}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in _checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class _TrainBar:
    """Rich progress bar with the loss and tokens/s."""

    def __init__(self, total: int, done: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", tps="-")

    def update(self, step: int, loss: float, tps: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")

    def close(self) -> None:
        self.progress.stop()
