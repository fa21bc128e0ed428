"""The settings of the synthesis commands, written once: each class is the library's argument, a section of
``synth run``'s config (``llm``, ``captions``, ``instructions``) and, through :mod:`modgap.cli.options`, the
options of ``modgap synth captions|instructions``. Torch- and network-free, so the CLI reads them to build
its options."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from modgap.errors import ModgapError
from modgap.files import setting


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request, recorded with every output; ``seed`` is the base of the per-sample
    seeds."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LLMSettings:
    """The model that writes and how it is reached (``synth run``'s ``llm`` section)."""

    model: str = setting(dataclasses.MISSING, "openai:MODEL (with --base-url), hf:PATH or builtin:NAME.", "--llm")
    base_urls: list[str] = setting(
        list, "OpenAI-compatible server; repeat to spread requests over several.", "--base-url"
    )
    api_key_env: str = setting("OPENAI_API_KEY", "Environment variable holding the API key.")
    timeout: float = setting(
        120.0,
        "Seconds to wait for a reply before the request is retried (connecting gives up after 10 s). "
        "Worst case for one request to a hung server: --request-attempts x (--timeout + up to 30 s of back-off).",
    )
    request_attempts: int = setting(6, "Attempts per request on connection errors, timeouts, 429 and 5xx.")
    batch_size: int = setting(16, "Prompts generated together (hf/builtin backend).")
    device: str = setting("cpu", "Torch device of the hf/builtin backend.")


@dataclass
class _StageSettings:
    """What both stages take: requests in flight, the memory bound, the prompt and the sampling."""

    concurrency: int = setting(8, "Requests in flight (openai backend).")
    window: int = setting(4096, "Inputs whose replies are gathered, judged and written at a time (bounds memory).")
    prompt_file: str | None = setting(
        None, "Prompt template file (default: the one the model declares in modgap_world.json, else the shipped one)."
    )
    temperature: float = setting(0.8, "Sampling temperature.")
    top_p: float = setting(0.95, "Nucleus sampling: the probability mass sampled from.")
    max_tokens: int = setting(256, "Tokens per reply at most.")
    seed: int = setting(0, "Base of the per-sample sampling seeds.")

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens, self.seed)

    def recorded(self) -> dict[str, Any]:
        """The settings besides the sampling, as the meta file records them."""
        drop = {f.name for f in dataclasses.fields(Sampling)}
        return {k: v for k, v in asdict(self).items() if k not in drop}


@dataclass
class CaptionSettings(_StageSettings):
    """Stage 1: seeds expanded into captions (``synth run``'s ``captions`` section)."""

    per_seed: int = setting(1, "Captions requested per seed.")
    min_words: int = setting(5, "Shorter captions are filtered out.")
    max_words: int = setting(200, "Longer captions are filtered out.")
    near_duplicate: float = setting(
        0.9, "MinHash Jaccard (word 3-grams) above which a caption is a near duplicate (1: off)."
    )
    dedupe: bool = setting(
        True, "Drop exact and near duplicates (--keep-duplicates: e.g. to dedupe shards later).",
        "--dedupe/--keep-duplicates",
    )  # fmt: skip


@dataclass
class InstructionSettings(_StageSettings):
    """Stage 2: a conversation per caption (``synth run``'s ``instructions`` section)."""

    min_turns: int = setting(3, "Fewest question/answer turns per conversation.")
    max_turns: int = setting(8, "Most question/answer turns per conversation.")
    max_attempts: int = setting(3, "Requests per caption: an invalid reply is sent back with the error, then retried.")
    temperature: float = setting(0.7, "Sampling temperature.")
    max_tokens: int = setting(1024, "Tokens per reply at most.")

    def __post_init__(self) -> None:
        if not 1 <= self.min_turns <= self.max_turns:
            raise ModgapError(f"--turns {self.min_turns}-{self.max_turns}: expected 1 <= MIN <= MAX")
        if self.max_attempts < 1:
            raise ModgapError("--max-attempts must be at least 1")
