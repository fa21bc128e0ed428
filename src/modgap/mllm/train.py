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
import sys
from pathlib import Path

import torch

from modgap.align.base import Aligner
from modgap.encoders.patches import patch_shape
from modgap.errors import ModgapError
from modgap.files import write_json
from modgap.mllm.config import TrainConfig
from modgap.mllm.data import batch_visual, build_training_set, collate, training_aligner
from modgap.mllm.model import VisionLanguageModel
from modgap.progress import ProgressFactory, silent
from modgap.store.checks import BadRows
from modgap.store.store import EmbeddingStore
from modgap.training import BAD_ROWS_FILE, record_settings, start_run, step_generator, train_lora
from modgap.training.loop import run_loop

MODEL_SUBDIR = "model"
CONFIG_FILE = "train_config.json"  # the run directory's recorded settings

__all__ = ["CONFIG_FILE", "MODEL_SUBDIR", "TrainConfig", "TrainResult", "train"]


@dataclasses.dataclass
class TrainResult:
    model_dir: Path
    steps: int
    final_loss: float
    losses: list[float]
    tokens_per_second: float
    stopped_early: bool
    seconds: float = 0.0  # wall time of the optimizer steps taken by this call
    model: VisionLanguageModel | None = None  # the trained model in memory


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
    bad = BadRows(cfg.on_bad)
    data = build_training_set(
        list(zip(cfg.data, cfg.embeddings, strict=False)),
        model.tokenizer,
        model.config.num_visual_tokens,
        prompt=model.config.prompt,
        max_length=model.config.max_length,
        max_missing=cfg.max_missing,
        bad=bad,
        progress=progress if main else silent,
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for r in data.reports:
            print(r.line(), file=sys.stderr)
        write_json(out / "data_report.json", [dataclasses.asdict(r) for r in data.reports])
        if bad.rows:
            bad.write(out / BAD_ROWS_FILE)
        record_settings(out, settings, CONFIG_FILE)

    # -- optimisation: the projector may have its own learning rate --------------------------------
    groups = [
        {"params": [p for p in model.projector.parameters() if p.requires_grad], "lr": cfg.projector_lr or cfg.lr}
    ]
    if llm_params := [p for p in model.llm.parameters() if p.requires_grad]:
        groups.append({"params": llm_params, "lr": cfg.lr})
    pad_id, aligner, rank = model.tokenizer.pad_token_id, model.aligner, accelerator.process_index
    normalize = model.config.token_mode != "patch"

    def step(wrapped: torch.nn.Module, indices: list[int], step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(accelerator.device) for k, v in collate(data, indices, pad_id).items()}
        noise = step_generator(cfg.seed, step, micro, rank)  # a resumed run draws the same noise
        visual = batch_visual(data, indices, aligner, train=True, noise_std=cfg.noise_std, generator=noise,
                              normalize=normalize)  # fmt: skip
        loss = wrapped(batch["input_ids"], batch["attention_mask"], visual.to(accelerator.device),
                       labels=batch["labels"]).loss  # fmt: skip
        accelerator.backward(loss)
        return loss.detach(), batch["attention_mask"].sum()

    result = run_loop(
        accelerator, model, groups, cfg, step,
        samples=len(data), settings=settings, grad_accum=cfg.grad_accum, label="training", unit="tokens",
        model_dir=out / MODEL_SUBDIR, created_by={"stage": cfg.stage, "train_config": settings}, progress=progress,
    )  # fmt: skip
    return TrainResult(result.model_dir, result.steps, result.final_loss, result.losses, result.per_second,
                       result.stopped_early, result.seconds, result.model)  # fmt: skip
