"""``modgap synth run``: Unicorn's three stages from one config into one directory.

::

    OUT/unicorn.json                       the settings this directory was made with (a rerun must match)
    OUT/captions.jsonl                     stage 1 (+ .meta.json, .failures.jsonl, .cache.sqlite)
    OUT/instructions.jsonl                 stage 2 (+ the same three; `instructions: null` skips it)
    OUT/stores/text                        stage 3: the captions' text embeddings
    OUT/stores/transferred                 ... moved into the image distribution by the aligner
    OUT/aligner                            the fitted aligner

Every step is skipped when its output is finished, and every step resumes where it stopped (the stages
through their reply caches, the embedding through its committed shards), so a killed run is rerun with the
same command. The two training commands that follow are printed at the end: ``modgap train pretrain`` on
the captions and ``modgap train sft`` on the conversations, both over the transferred store.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modgap.errors import ModgapError
from modgap.files import from_mapping, read_settings
from modgap.progress import ProgressFactory, silent
from modgap.synth.settings import CaptionSettings, InstructionSettings, LLMSettings

SETTINGS_FILE = "unicorn.json"
SECTIONS = ("llm", "seeds", "captions", "instructions", "transfer")


@dataclasses.dataclass
class SeedsSection:
    path: str
    id_column: str = "id"
    text_column: str = "text"


@dataclasses.dataclass
class TransferSection:
    encoder: str  # whose text tower embeds the captions (the image encoder of the model to be trained)
    method: str = "mean-shift"  # Unicorn's: x - mu_text
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    target: str | None = None  # a store of unpaired image embeddings; Unicorn's mean shift needs none
    batch_size: int = 64
    device: str = "cpu"


@dataclasses.dataclass
class UnicornConfig:
    """``synth run``'s config: the ``llm``, ``captions`` and ``instructions`` sections are the settings the
    ``synth captions|instructions`` commands take (:mod:`modgap.synth.settings`); the top-level ``seed`` is the
    stages' sampling seed unless a section sets its own."""

    llm: LLMSettings
    seeds: SeedsSection
    transfer: TransferSection
    captions: CaptionSettings = dataclasses.field(default_factory=CaptionSettings)
    # None skips stage 2 (``instructions: null`` in a config): captions for pretraining only.
    instructions: InstructionSettings | None = dataclasses.field(default_factory=InstructionSettings)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_unicorn_config(path: str | os.PathLike) -> UnicornConfig:
    """The config from JSON/YAML; unknown sections and keys are errors (a typo is not a no-op)."""
    data = read_settings(path)
    unknown = sorted(set(data) - {*SECTIONS, "seed"})
    if unknown:
        raise ModgapError(f"{path}: unknown sections {unknown} (expected {list(SECTIONS)} and seed)")
    kinds = {"llm": LLMSettings, "seeds": SeedsSection, "captions": CaptionSettings,
             "instructions": InstructionSettings, "transfer": TransferSection}  # fmt: skip
    if isinstance(data.get("llm"), dict) and "concurrency" in data["llm"]:
        raise ModgapError(
            f"{path} [llm]: concurrency is set per stage (captions.concurrency, instructions.concurrency), "
            "as `synth captions|instructions --concurrency` take it"
        )
    sections: dict[str, Any] = {}
    for name, cls in kinds.items():
        value = data.get(name, {})
        if name == "instructions" and value is None:
            sections[name] = None
            continue
        if not isinstance(value, dict):
            raise ModgapError(f"{path}: section {name!r} must be a mapping")
        if name in ("llm", "seeds", "transfer") and not value:
            raise ModgapError(f"{path}: section {name!r} is required")
        if name in ("captions", "instructions") and "seed" in data:
            value = {"seed": data["seed"], **value}
        sections[name] = from_mapping(cls, value, f"{path} [{name}]")
    return UnicornConfig(**sections)


@dataclasses.dataclass
class UnicornResult:
    captions: Path
    instructions: Path | None  # None: stage 2 was skipped
    text_store: Path
    transferred_store: Path
    lines: list[str]

    def next_commands(self, llm: str = "LLM") -> list[str]:
        store = self.transferred_store
        commands = [
            f"modgap train pretrain --llm {llm} --data {self.captions} --embeddings {store} --out runs/pretrain"
        ]
        if self.instructions is not None:
            commands.append(f"modgap train sft --init runs/pretrain/model --data {self.instructions} "
                            f"--embeddings {store} --out runs/sft")  # fmt: skip
        return commands


def run_unicorn(
    config: UnicornConfig,
    out_dir: str | os.PathLike,
    *,
    command: str = "",
    progress: ProgressFactory = silent,
    log: Callable[[str], None] = print,
) -> UnicornResult:
    """Run (or resume) the three stages into ``out_dir`` (see the module docstring)."""
    from modgap.align import fit_and_apply
    from modgap.embed import EmbedOptions, embed_once
    from modgap.encoders import load_encoder
    from modgap.synth.captions import synth_captions
    from modgap.synth.instructions import synth_instructions
    from modgap.synth.llm import open_backend
    from modgap.training import claim_run_dir

    root = Path(out_dir)
    transfer = config.transfer
    if transfer.target is None and (transfer.method != "mean-shift" or transfer.params.get("add_target_mean")):
        raise ModgapError(f"transfer.method {transfer.method!r} needs transfer.target (a store of image embeddings)")
    claim_run_dir(root, config.as_dict(), settings_file=SETTINGS_FILE, hint="; use another output directory")
    llm, lines = config.llm, []

    def note(line: str) -> None:
        lines.append(line)
        log(line)

    captions = root / "captions.jsonl"
    if captions.is_file():
        note(f"stage 1: {captions} is finished")
    else:
        summary = synth_captions(open_backend(llm), config.seeds.path, captions, config.captions,
                                 id_column=config.seeds.id_column, text_column=config.seeds.text_column,
                                 command=command, progress=progress)  # fmt: skip
        note(f"stage 1: {summary.line()}")
        if summary.rows == 0:
            raise ModgapError(f"stage 1 kept no captions; see {root / 'captions.failures.jsonl'}")

    instructions = None if config.instructions is None else root / "instructions.jsonl"
    if instructions is None:
        note("stage 2: skipped (instructions: null)")
    elif instructions.is_file():
        note(f"stage 2: {instructions} is finished")
    else:
        summary2 = synth_instructions(open_backend(llm), captions, instructions, config.instructions,
                                      command=command, progress=progress)  # fmt: skip
        note(f"stage 2: {summary2.line()}")

    text_store, transferred = root / "stores" / "text", root / "stores" / "transferred"
    embedded = embed_once(
        lambda: load_encoder(transfer.encoder, device=transfer.device),
        "text",
        captions,
        text_store,
        options=EmbedOptions(batch_size=transfer.batch_size, num_workers=0),
        created_by=command or "modgap synth run",
        progress=progress,
    )
    note(f"stage 3: {embedded.line()}" if embedded else f"stage 3: {text_store} is finished")
    if transferred.is_dir():
        note(f"stage 3: {transferred} is finished")
    else:
        fit_and_apply(
            transfer.method,
            text_store,
            transfer.target or text_store,  # plain mean shift reads the text mean only
            transferred,
            params=transfer.params,
            save_aligner=root / "aligner",
            device=transfer.device,
            command=command or "modgap synth run",
            progress=progress,
        )
        note(f"stage 3: {transfer.method} -> {transferred}")
    return UnicornResult(captions, instructions, text_store, transferred, lines)
