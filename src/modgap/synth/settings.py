"""The settings of both synthesis stages, written once: the library's defaults, `modgap synth captions|
instructions` options and `synth run`'s config sections all come from these classes (torch- and
network-free, so the CLI reads them to build its options)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from modgap.errors import ModgapError


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, recorded with every output; ``seed`` is the base of the per-sample seeds."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CAPTION_SAMPLING = Sampling(temperature=0.8, top_p=0.95, max_tokens=256)


@dataclass
class CaptionSettings:
    per_seed: int = 1
    min_words: int = 5
    max_words: int = 200
    near_duplicate_threshold: float = 0.9  # estimated Jaccard similarity of word 3-gram sets (1: off)
    dedupe: bool = True  # drop exact and near duplicates (within this run or shard)
    concurrency: int = 8
    window: int = 4096  # seeds whose replies are gathered, judged and written at a time (bounds the memory)
    sampling: Sampling = field(default_factory=lambda: CAPTION_SAMPLING)


INSTRUCTION_SAMPLING = Sampling(temperature=0.7, top_p=0.95, max_tokens=1024)


@dataclass
class InstructionSettings:
    min_turns: int = 3
    max_turns: int = 8
    max_attempts: int = 3  # requests per caption, the first included
    concurrency: int = 8
    window: int = 4096  # captions conversed, judged and written at a time (bounds the memory)
    sampling: Sampling = field(default_factory=lambda: INSTRUCTION_SAMPLING)

    def __post_init__(self) -> None:
        if not 1 <= self.min_turns <= self.max_turns:
            raise ModgapError(f"--turns {self.min_turns}-{self.max_turns}: expected 1 <= MIN <= MAX")
        if self.max_attempts < 1:
            raise ModgapError("--max-attempts must be at least 1")
