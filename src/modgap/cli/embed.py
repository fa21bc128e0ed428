"""``modgap embed``: images and texts into embedding stores with a dual encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modgap.cli.common import DeviceOpt, command_line, out, quiet_transformers
from modgap.errors import ModgapError
from modgap.progress import rich_progress

EXAMPLE = (
    "Example: modgap embed --encoder hf:/models/clip-vit-b32 --data dataset.json --image-root images/ "
    "--modality both --out-image stores/image --out-text stores/text"
)


def embed(
    encoder_spec: Annotated[
        str,
        typer.Option("--encoder", help="hf:PATH (CLIP, SigLIP, any get_*_features model) or llm2clip:VISION,LLM2VEC."),
    ],
    data: Annotated[
        Path, typer.Option(help="dataset.json, .jsonl, .csv, .parquet, an image folder, or a saved 🤗 dataset.")
    ],
    modality: Annotated[str, typer.Option(help="image, text or both.")] = "both",
    out_image: Annotated[Path | None, typer.Option(help="Image store (created or resumed).")] = None,
    out_text: Annotated[Path | None, typer.Option(help="Text store (created or resumed).")] = None,
    image_root: Annotated[Path | None, typer.Option(help="Directory that relative image paths start from.")] = None,
    id_column: Annotated[str, typer.Option(help="Id column of tabular inputs.")] = "id",
    text_column: Annotated[str, typer.Option(help="Text column of tabular inputs.")] = "text",
    image_column: Annotated[str, typer.Option(help="Image column of tabular inputs.")] = "image",
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.")] = 64,
    num_workers: Annotated[
        int | None, typer.Option(help="DataLoader worker processes (decoding, tokenising); default: half the cores.")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    shard_rows: Annotated[int | None, typer.Option(help="Rows per shard (default: ~256 MiB).")] = None,
    max_text_length: Annotated[int | None, typer.Option(help="Truncate texts to this many tokens.")] = None,
    features: Annotated[
        str, typer.Option(help="global (one embedding per item) or patch (each image's patch tokens, LLaVA-style).")
    ] = "global",
    device: DeviceOpt = "cpu",
    online: Annotated[bool, typer.Option("--online", help="Allow downloads from the 🤗 Hub.")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Run the model's own code.")] = False,
    templates: Annotated[
        Path | None,
        typer.Option(
            help="Prompt templates of a stock multimodal LLM (embedder:DIR): JSON with text, image, image_text; "
            "<sent> marks the text, the model's image token the image; used verbatim."
        ),
    ] = None,
) -> None:
    """Embed unpaired images and texts into stores. Rerun the same command to resume after a crash.

    Under torchrun / accelerate launch each process takes a block of the input; one store results.
    """
    from modgap.distributed import init_from_env, shutdown
    from modgap.embed import Columns, EmbedOptions, embed_data

    quiet_transformers()
    outs = {"image": out_image, "text": out_text}
    wanted = {"both": ["image", "text"], "image": ["image"], "text": ["text"]}.get(modality)
    if wanted is None:
        raise ModgapError(f"--modality must be image, text or both, got {modality!r}")
    options = EmbedOptions(batch_size=batch_size, dtype=dtype, shard_rows=shard_rows)
    if num_workers is not None:
        options.num_workers = num_workers
    summaries = embed_data(
        encoder_spec,
        data,
        {m: outs[m] for m in wanted},
        image_root=image_root,
        columns=Columns(id_column, text_column, image_column),
        options=options,
        device=device,
        online=online,
        trust_remote_code=trust_remote_code,
        max_text_length=max_text_length,
        templates=templates,
        features=features,
        created_by=command_line(),
        progress=rich_progress(unit="items"),
    )
    if init_from_env()[0] == 0:
        for summary in summaries:
            out.print(summary.line())
    shutdown()


def register(root: typer.Typer) -> None:
    root.command("embed", epilog=EXAMPLE)(embed)
