"""``modgap demo`` and ``modgap world``: the built-in world and its tiny models."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modgap.cli.common import err, out, quiet_transformers
from modgap.progress import rich_progress

world_app = typer.Typer(help="The built-in world: regenerate its tiny models.", no_args_is_help=True)


def _timed_log() -> Callable[[str], None]:
    """Each step's line on stderr with the seconds since the start (where a demo's time goes, at a glance)."""
    started = time.perf_counter()
    return lambda m: err.print(f"[{time.perf_counter() - started:5.0f} s] {m}", highlight=False)


def demo(
    workdir: Annotated[Path, typer.Option(help="Where the world, stores, models and report go (resumable).")] = Path(
        "modgap-demo"
    ),
    quick: Annotated[bool, typer.Option(help="Smaller pools and budget (about 3 minutes on 2 CPU cores).")] = False,
    world: Annotated[
        str,
        typer.Option(help="shapes (the first world: one main object) or relations (the second: 2-4 objects "
                     "with relations, textures, counts; its own encoder and LM)."),
    ] = "shapes",
    seed: Annotated[int, typer.Option(help="World and training seed.")] = 0,
    sft: Annotated[int, typer.Option(help="After text-only pretraining, tune on this many paired samples.")] = 0,
    scaling: Annotated[
        bool,
        typer.Option(
            "--scaling",
            help="Also train on 1/8, 1/4, 1/2 and all of the text pool (aligned) and of the paired pool: the "
            "data-scaling curves (three more models per curve).",
        ),
    ] = False,
    scaling_aligner: Annotated[
        list[str] | None,
        typer.Option(
            help="Aligner of a text-only scaling curve (repeat for several; default realign).",
            metavar="METHOD",
        ),
    ] = None,
    embedder: Annotated[
        bool,
        typer.Option("--embedder", help="Run the universal-embedder (UniME) section instead: both stages, ablations."),
    ] = False,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher text encoder of --embedder (default: the installed all-MiniLM-L6-v2).")
    ] = None,
) -> None:
    """The whole method offline: gap, aligners, text-only pretraining, evaluation on held-out images."""
    from modgap.world.demo import columns, run_demo, table_rows
    from modgap.world.worlds import get_world

    quiet_transformers()
    get_world(world)  # an unknown name is refused before anything is written
    if embedder:
        _embedder_demo(workdir, quick, seed, teacher, world)
        return
    from modgap.world.demo import SCALES, SCALING_METHODS

    if scaling_aligner and not scaling:
        from modgap.errors import ModgapError

        raise ModgapError("--scaling-aligner only applies with --scaling")
    result = run_demo(
        workdir,
        quick=quick,
        seed=seed,
        sft=sft,
        scaling=SCALES if scaling else (),
        scaling_methods=tuple(scaling_aligner or SCALING_METHODS),
        world=world,
        progress=rich_progress(),
        log=_timed_log(),
    )
    table = Table(title=f"modgap demo ({world} world, seed {seed}{', quick' if quick else ''}): captions of "
                  "held-out images")  # fmt: skip
    table.add_column("model")
    for _, header in columns(world):
        table.add_column(header, justify="right")
    for row in table_rows(result.rows, world):
        table.add_row(*row)
    out.print(table)
    if result.scaling:
        out.print(scaling_table(result.scaling, world))
    out.print(f"report: {workdir / 'report.md'}, {workdir / 'report.html'}  ({result.seconds:.0f} s)")


def scaling_table(scaling: dict, world: str) -> Table:
    from modgap.world.report import SECOND_FIGURE_LABELS, attributes_and_second, second_figure

    second = SECOND_FIGURE_LABELS[second_figure(world)]
    table = Table(title=f"scaling: mean attribute accuracy ({second}) by pool size, same steps")
    table.add_column("pool size", justify="right")
    for curve in scaling["curves"]:
        table.add_column(curve, justify="right")
    for i, n in enumerate(scaling["sizes"]):
        table.add_row(str(n), *(attributes_and_second(rows[i], world) for rows in scaling["curves"].values()))
    return table


def _embedder_demo(workdir: Path, quick: bool, seed: int, teacher: str | None, world: str) -> None:
    from modgap.world.embedder_demo import columns, run_embedder_demo

    result = run_embedder_demo(
        workdir, quick=quick, seed=seed, teacher=teacher, world=world, progress=rich_progress(), log=_timed_log()
    )
    table = Table(title=f"modgap demo --embedder ({world} world, seed {seed}): held-out retrieval and "
                  "compositional accuracy")  # fmt: skip
    table.add_column("model")
    for _, header in columns(world):
        table.add_column(header, justify="right")
    for name, row in result["rows"].items():
        table.add_row(name, *(f"{row[k]:.3f}" if k in row else "" for k, _ in columns(world)))
    out.print(table)
    out.print(f"figures: {workdir / 'embedder' / 'results.json'}  ({result['seconds']:.0f} s)")


@world_app.command("train-encoder", epilog="Example: modgap world train-encoder --out src/modgap/builtin/tiny-clip")
def train_encoder_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the CLIPModel.")],
    world: Annotated[str, typer.Option(help="shapes (the first world) or relations (the second).")] = "shapes",
    pairs: Annotated[int, typer.Option(help="World scenes to train on.")] = 20000,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 600,
    seed: Annotated[int, typer.Option()] = 0,
    width: Annotated[int, typer.Option(help="Hidden width of both towers.")] = 64,
    projection_dim: Annotated[int, typer.Option(help="Embedding width.")] = 128,
    temperature: Annotated[float, typer.Option(help="Initial (or fixed) softmax temperature.")] = 0.01,
    learn_temperature: Annotated[bool, typer.Option(help="Learn the temperature (clamped at 0.01).")] = False,
    positives: Annotated[
        str, typer.Option(help="'pair' (CLIP's loss) or 'describes' (every image the caption describes).")
    ] = "describes",
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 2e-4,
    partial_captions: Annotated[
        float, typer.Option(help="Share of training captions that name only one or two attributes.")
    ] = 0.7,
    patch_size: Annotated[int, typer.Option(help="Side of the vision tower's patches, in pixels.")] = 4,
    grouped: Annotated[
        int, typer.Option(help="Scenes per batch group alike in all but place and count (1: random batches).")
    ] = 1,
    position_init: Annotated[
        str, typer.Option(help="Vision position embeddings start 'random' (🤗's init) or at a 'sincos' grid.")
    ] = "random",
) -> None:
    """Train the tiny CLIP on world pairs and save it in 🤗 format."""
    from modgap.world.encoder import train_encoder

    quiet_transformers()
    info = train_encoder(out_dir, world=world, pairs=pairs, steps=steps, seed=seed, width=width,
                         projection_dim=projection_dim, temperature=temperature, learn_temperature=learn_temperature,
                         positives=positives, lr=lr, partial_captions=partial_captions, patch_size=patch_size,
                         grouped=grouped, position_init=position_init, progress=rich_progress())  # fmt: skip
    out.print(f"saved {out_dir} (final loss {info['final_loss']:.3f})")


@world_app.command("train-lm", epilog="Example: modgap world train-lm --out src/modgap/builtin/tiny-lm")
def train_lm_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the causal LM.")],
    world: Annotated[str, typer.Option(help="shapes (the first world) or relations (the second).")] = "shapes",
    texts: Annotated[int, typer.Option(help="World texts to train on (five tasks a scene; relations: two).")] = 100000,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 5000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train the tiny chat LM on world language (caption, restate, expand seeds, write conversations as JSON,
    answer questions; in relations caption and restate) and save it in 🤗 format."""
    from modgap.world.lm import train_world_lm

    quiet_transformers()
    info = train_world_lm(out_dir, world=world, texts=texts, steps=steps, seed=seed, progress=rich_progress())
    out.print(f"saved {out_dir} (final loss {info['final_loss']:.3f})")


@world_app.command("assemble-llava", epilog="Example: modgap world assemble-llava --out /tmp/tiny-llava")
def assemble_llava_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the stock LlavaForConditionalGeneration.")],
    projector: Annotated[
        Path | None,
        typer.Option(help="A modgap model over tiny-clip patch tokens whose projector to use (default: random)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random projector.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an OUT written by this command.")] = False,
) -> None:
    """Assemble the built-in world's stock LLaVA: tiny-clip's vision tower, a projector and tiny-lm, with a
    LlavaProcessor (loads with AutoModelForImageTextToText + AutoProcessor)."""
    from modgap.world.stock import assemble_llava

    quiet_transformers()
    assemble_llava(out_dir, seed=seed, projector=projector, overwrite=overwrite)
    out.print(f"saved {out_dir}")


def register(root: typer.Typer) -> None:
    root.command("demo", epilog="Example: modgap demo --quick --workdir /tmp/demo")(demo)
    root.add_typer(world_app, name="world")
