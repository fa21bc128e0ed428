"""``modgap train``, ``modgap generate`` and ``modgap eval``: the ReVision stages on the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from modgap.cli.console import console
from modgap.errors import ModgapError
from modgap.progress import rich_progress

train_app = typer.Typer(
    help="Train a vision-language model (ReVision: pretrain on aligned text, then sft).", no_args_is_help=True
)
eval_app = typer.Typer(help="Evaluate models.", no_args_is_help=True)
out = console()
err = console(stderr=True)

PRETRAIN_EXAMPLE = (
    "Example: modgap train pretrain --llm models/qwen2-0.5b-instruct --data captions.jsonl "
    "--embeddings stores/text --aligner aligners/realign --out runs/pretrain"
)
SFT_EXAMPLE = (
    "Example: accelerate launch --config_file configs/accelerate/ddp.yaml -m modgap.cli.main train sft "
    "--init runs/pretrain/model --data llava_instruct.json --embeddings stores/image --tune lora --out runs/sft"
)


def _load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModgapError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ModgapError(f"{path}: cannot parse ({e})") from e
    if not isinstance(data, dict):
        raise ModgapError(f"{path}: expected a mapping of settings")
    known = {f.name for f in dataclasses.fields(_train_config_cls())}
    unknown = set(data) - known
    if unknown:
        raise ModgapError(f"{path}: unknown settings {sorted(unknown)}")
    return data


def _train_config_cls() -> Any:
    from modgap.mllm.train import TrainConfig

    return TrainConfig


def _make_train_command(stage: str):
    def command(
        ctx: typer.Context,
        out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory (model in OUT/model).")] = None,
        data: Annotated[
            list[Path] | None, typer.Option(help="Conversation or caption file (JSON/JSONL); repeatable.")
        ] = None,
        embeddings: Annotated[
            list[Path] | None, typer.Option(help="Store joined by id to the matching --data; repeatable.")
        ] = None,
        llm: Annotated[str | None, typer.Option(help="Base causal LM directory (default: builtin:tiny-lm).")] = None,
        init: Annotated[
            Path | None, typer.Option(help="modgap model directory to start from (sft: the pretrained one).")
        ] = None,
        aligner: Annotated[
            Path | None, typer.Option(help="Aligner for text stores (images get its target view).")
        ] = None,
        visual_tokens: Annotated[int, typer.Option(help="k: visual tokens per embedding.")] = 8,
        projector: Annotated[str, typer.Option(help="mlp (2-layer GELU) or linear.")] = "mlp",
        token_mode: Annotated[
            str, typer.Option(help="expand (k distinct tokens) or repeat (reference design).")
        ] = "expand",
        prompt: Annotated[str | None, typer.Option(help="Instruction of caption-only samples.")] = None,
        chat_template: Annotated[
            str | None, typer.Option(help="Jinja chat template (default: the tokenizer's).")
        ] = None,
        max_length: Annotated[int, typer.Option(help="Longer samples are cut from the end.")] = 512,
        max_missing: Annotated[
            float, typer.Option(help="Largest tolerated fraction of rows without an embedding.")
        ] = 0.01,
        noise_std: Annotated[
            float, typer.Option(help="Train-time Gaussian noise on visual inputs (CapDec-style).")
        ] = 0.0,
        tune: Annotated[
            str | None, typer.Option(help="projector | full | lora (default: projector for pretrain, full for sft).")
        ] = None,
        lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
        lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
        lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
        epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
        max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
        batch_size: Annotated[int, typer.Option(help="Samples per process per micro-batch.")] = 8,
        grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
        lr: Annotated[float | None, typer.Option(help="Learning rate (default 1e-3 pretrain, 2e-5 sft).")] = None,
        projector_lr: Annotated[float | None, typer.Option(help="Projector learning rate (default: --lr).")] = None,
        weight_decay: Annotated[float, typer.Option()] = 0.0,
        warmup_ratio: Annotated[float, typer.Option(help="Fraction of steps of linear warm-up.")] = 0.03,
        max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping (0: off).")] = 1.0,
        seed: Annotated[int, typer.Option()] = 0,
        mixed_precision: Annotated[str, typer.Option(help="auto (bf16 on GPU) | no | bf16 | fp16.")] = "auto",
        gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations to save memory.")] = False,
        save_every: Annotated[int, typer.Option(help="Checkpoint every N optimizer steps (0: at the end).")] = 0,
        keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints kept.")] = 2,
        resume: Annotated[bool, typer.Option(help="Continue from the latest checkpoint in --out.")] = False,
        overwrite: Annotated[bool, typer.Option(help="Start over if --out exists.")] = False,
        stop_after: Annotated[
            int | None, typer.Option(help="Stop after N optimizer steps (checkpointed; --resume continues).")
        ] = None,
        log_every: Annotated[int, typer.Option(help="Log to the tracker every N steps.")] = 10,
        report_to: Annotated[str, typer.Option(help="tensorboard | wandb | none.")] = "tensorboard",
        online: Annotated[bool, typer.Option(help="Allow Hub downloads.")] = False,
        trust_remote_code: Annotated[bool, typer.Option(help="Run model code shipped with the checkpoint.")] = False,
        config: Annotated[
            Path | None, typer.Option(help="JSON/YAML file of these settings (options given here win).")
        ] = None,
    ) -> None:
        from modgap.mllm.train import TrainConfig, train

        given = {
            "out": out_dir,
            "data": data,
            "embeddings": embeddings,
            "llm": llm,
            "init": init,
            "aligner": aligner,
            "num_visual_tokens": visual_tokens,
            "projector": projector,
            "token_mode": token_mode,
            "prompt": prompt,
            "chat_template": chat_template,
            "max_length": max_length,
            "max_missing": max_missing,
            "noise_std": noise_std,
            "tune": tune,
            "lora_r": lora_r,
            "lora_alpha": lora_alpha,
            "lora_dropout": lora_dropout,
            "epochs": epochs,
            "max_steps": max_steps,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "lr": lr,
            "projector_lr": projector_lr,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
            "max_grad_norm": max_grad_norm,
            "seed": seed,
            "mixed_precision": mixed_precision,
            "gradient_checkpointing": gradient_checkpointing,
            "save_every": save_every,
            "keep_checkpoints": keep_checkpoints,
            "resume": resume,
            "overwrite": overwrite,
            "stop_after": stop_after,
            "log_every": log_every,
            "report_to": report_to,
            "online": online,
            "trust_remote_code": trust_remote_code,
        }
        option_of = {"out": "out_dir", "num_visual_tokens": "visual_tokens"}
        settings = _load_config_file(config) if config else {}
        for key, value in given.items():
            source = ctx.get_parameter_source(option_of.get(key, key))
            if key not in settings or source not in (click.core.ParameterSource.DEFAULT, None):
                settings[key] = value
        for key in ("data", "embeddings"):
            settings[key] = [str(p) for p in settings.get(key) or []]
        for key in ("out", "init", "aligner"):
            if settings.get(key) is not None:
                settings[key] = str(settings[key])
        if not settings.get("out"):
            raise ModgapError("--out is required")
        result = train(TrainConfig(stage=stage, **settings))
        if result.stopped_early:
            out.print(
                f"stopped after step {result.steps} (checkpoint in {settings['out']}/checkpoints; --resume continues)"
            )
        else:
            out.print(
                f"trained {result.steps} steps, final loss {result.final_loss:.4f}, "
                f"{result.tokens_per_second:,.0f} tokens/s; model in {result.model_dir}"
            )

    return command


train_app.command(
    "pretrain", epilog=PRETRAIN_EXAMPLE, help="Stage 1: LLM frozen, projector learns to read aligned text embeddings."
)(_make_train_command("pretrain"))
train_app.command(
    "sft", epilog=SFT_EXAMPLE, help="Stage 2: tune the LLM (full or LoRA) and projector on image embeddings."
)(_make_train_command("sft"))


def _resolve_model(path: Path) -> Path:
    from modgap.mllm.config import CONFIG_FILE

    return path / "model" if not (path / CONFIG_FILE).is_file() and (path / "model" / CONFIG_FILE).is_file() else path


def _load_model(path: Path, base_llm: str | None, device: str) -> Any:
    from transformers.utils import logging as hf_logging

    from modgap.mllm.model import VisionLanguageModel

    hf_logging.disable_progress_bar()
    model = VisionLanguageModel.load(_resolve_model(path), base_llm=base_llm, device=device)
    model.eval()
    return model


def generate(
    model_dir: Annotated[Path, typer.Option("--model", help="Model directory (or a training run's --out).")],
    embeddings: Annotated[Path | None, typer.Option(help="Caption embeddings from this store.")] = None,
    ids: Annotated[str | None, typer.Option(help="Comma-separated ids of --embeddings (default: all).")] = None,
    image: Annotated[
        list[Path] | None, typer.Option(help="Image file(s), encoded with the model's recorded encoder.")
    ] = None,
    text: Annotated[
        list[str] | None, typer.Option(help="Text(s) encoded and aligned: a quick check without images.")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Instruction (default: the model's captioning prompt).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows of --embeddings.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    num_beams: Annotated[int, typer.Option(help="Beam search width (1: greedy).")] = 1,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy/beam decoding.")] = False,
    temperature: Annotated[float, typer.Option()] = 1.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    encoder: Annotated[str | None, typer.Option(help="Encoder spec (default: the one the model records).")] = None,
    base_llm: Annotated[str | None, typer.Option(help="New location of the base LM, if it moved.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write JSONL here instead of printing.")] = None,
) -> None:
    """Generate replies from stored embeddings, image files or texts."""
    import numpy as np
    import torch

    from modgap.atomic import write_jsonl
    from modgap.store.store import EmbeddingStore

    if sum(x is not None and x != [] for x in (embeddings, image, text)) != 1:
        raise ModgapError("give exactly one of --embeddings, --image, --text")
    model = _load_model(model_dir, base_llm, device)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
    items: list[tuple[str, torch.Tensor]] = []
    if embeddings is not None:
        store = EmbeddingStore.open(embeddings)
        keys = ids.split(",") if ids else store.ids()[:limit]
        raw = torch.from_numpy(store.get(keys).astype(np.float32))
        visual = model.visual_inputs(raw, store.manifest.modality or "image")
        items = list(zip(keys, visual, strict=False))
    else:
        from modgap.encoders import load_encoder

        spec = encoder or model.config.encoder
        if not spec:
            raise ModgapError("the model records no encoder; pass --encoder")
        enc = load_encoder(spec, device=device)
        if image:
            from PIL import Image

            pics = []
            for p in image:
                try:
                    with Image.open(p) as im:
                        pics.append(im.convert("RGB"))
                except OSError as e:
                    raise ModgapError(f"{p}: cannot read image ({e})") from e
            visual = model.visual_inputs(enc.encode_images(pics), "image")
            items = list(zip(map(str, image), visual, strict=False))
        else:
            visual = model.visual_inputs(enc.encode_texts(list(text or [])), "text")
            items = list(zip(text or [], visual, strict=False))
    replies = model.generate(torch.stack([v for _, v in items]), prompt, batch_size=batch_size, **kwargs)
    rows = [{"id": k, "reply": r} for (k, _), r in zip(items, replies, strict=True)]
    if out_file:
        write_jsonl(out_file, rows)
        out.print(f"wrote {len(rows)} replies to {out_file}")
    else:
        for r in rows:
            print(f"{r['id']}\t{r['reply']}")  # plain tab-separated lines, for pipes


@eval_app.command(
    "caption",
    epilog="Example: modgap eval caption --model runs/sft --data test.jsonl "
    "--embeddings stores/test-images --out runs/sft/eval",
)
def eval_caption(
    model_dir: Annotated[Path, typer.Option("--model", help="Model directory (or a training run's --out).")],
    data: Annotated[Path, typer.Option(help="Rows with id and reference caption(s) (JSON/JSONL).")],
    embeddings: Annotated[Path, typer.Option(help="Store holding the rows' embeddings (usually images).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write metrics.json and predictions.jsonl here.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N rows.")] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    max_new_tokens: Annotated[int, typer.Option()] = 48,
    num_beams: Annotated[int, typer.Option()] = 1,
    prompt: Annotated[str | None, typer.Option()] = None,
    base_llm: Annotated[str | None, typer.Option(help="New location of the base LM, if it moved.")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Caption held-out embeddings and score BLEU-4 / CIDEr against the references (pycocoevalcap)."""
    from modgap.atomic import write_jsonl, write_text
    from modgap.eval.caption import evaluate_captions

    model = _load_model(model_dir, base_llm, device)
    result = evaluate_captions(
        model,
        data,
        embeddings,
        batch_size=batch_size,
        limit=limit,
        prompt=prompt,
        progress=rich_progress(unit="rows"),
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
    )
    if result.missing:
        err.print(f"{len(result.missing)} rows skipped: id not in {embeddings} (e.g. {result.missing[:3]})")
    table = Table(title=f"captions: {len(result.rows)} samples")
    for k in result.metrics:
        table.add_column(k, justify="right")
    table.add_row(*(f"{v:.4f}" for v in result.metrics.values()))
    out.print(table)
    if out_dir:
        write_text(
            out_dir / "metrics.json",
            json.dumps({**result.metrics, "samples": len(result.rows), "missing": len(result.missing)}, indent=2)
            + "\n",
        )
        write_jsonl(out_dir / "predictions.jsonl", result.rows)
        out.print(f"wrote {out_dir}/metrics.json and predictions.jsonl")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    app.command("generate", epilog="Example: modgap generate --model runs/sft --image photo.jpg")(generate)


__all__ = ["register"]
