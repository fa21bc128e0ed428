"""Stage 1 of Unicorn: sparse caption seeds expanded into detailed captions by an LLM.

For each seed and each of ``per_seed`` samples, one request (the prompt template with the seed filled in,
the sample's own seed for sampling). Replies are persisted as they arrive (:class:`ReplyCache`, beside the
output), so a killed run loses only what was in flight and a rerun sends only the missing requests. When
every reply is in, they are filtered in seed order and the outputs are written whole:

* ``OUT`` (JSONL): ``id`` (``SEEDID-k``, deterministic), ``caption``, ``seed_id``, ``seed``;
* ``OUT.failures.jsonl``: one row per requested sample that did not become an output row (``id``,
  ``seed_id``, ``reason``, ``reply``), so rows + failures = seeds x per_seed;
* ``OUT.meta.json``: the model, the prompt template's hash, the sampling settings, counts per filter,
  diversity figures (distinct-n), the command.

Filters: request failed, empty, truncated (``finish_reason == "length"``), refusal, too short / too long
(words), exact duplicate (after normalising case and spaces), near duplicate (MinHash LSH over word
3-grams, ``datasketch``). With ``shard=(i, n)`` only the i-th contiguous block of seeds is done; the n
outputs concatenate to the output of one run, except that duplicates are found within a shard only (run
``dedupe=False`` per shard and filter the concatenation, or accept duplicates across shards).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modgap.progress import ProgressFactory, silent
from modgap.synth import stage
from modgap.synth.cache import ReplyCache, request_key
from modgap.synth.llm import LocalChat, Messages, OpenAIChat, Reply
from modgap.synth.requests import ReplyCounter, gather_replies
from modgap.synth.settings import CaptionSettings
from modgap.synth.stage import DistinctNgrams, Emit, read_texts

REFUSAL = re.compile(r"\b(I'?m sorry|I apologi[sz]e|I cannot|I can't|as an AI|I am unable|I'm unable)\b", re.I)
FILTERS = ("request_failed", "empty", "truncated", "refusal", "too_short", "too_long", "duplicate", "near_duplicate")


@dataclass
class SynthSummary:
    rows: int
    failures: int
    cached: int  # replies found in the cache
    requested: int  # replies requested in this run
    filtered: dict[str, int]
    seconds: float
    distinct: dict[str, float]

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.filtered.items() if v) or "none"
        return (
            f"{self.rows} rows, {self.failures} failures ({reasons}); {self.cached} replies from the cache, "
            f"{self.requested} requested; distinct-1 {self.distinct.get('distinct-1', 0):.3f}, "
            f"distinct-2 {self.distinct.get('distinct-2', 0):.3f}"
        )


def read_seeds(path: str | os.PathLike, id_column: str = "id", text_column: str = "text") -> list[tuple[str, str]]:
    """(id, text) of every seed; errors name the file and row (missing column, empty text, duplicate id)."""
    return read_texts(path, id_column, text_column, "seed")


def _messages(template: str, seed: str) -> Messages:
    return [{"role": "user", "content": template.replace("{seed}", seed)}]


def synth_captions(
    backend: OpenAIChat | LocalChat,
    seeds_path: str | os.PathLike,
    out: str | os.PathLike,
    settings: CaptionSettings | None = None,
    *,
    prompt: str | None = None,
    id_column: str = "id",
    text_column: str = "text",
    shard: tuple[int, int] = (0, 1),
    command: str = "",
    progress: ProgressFactory = silent,
) -> SynthSummary:
    """Run stage 1 (see the module docstring); returns the summary also written into ``OUT.meta.json``."""
    settings = settings or CaptionSettings()
    out = Path(out)
    template, prompt_source = stage.template(prompt, "prompts/caption.txt", "{seed}", settings.prompt_file,
                                             backend=backend, stage="captions")  # fmt: skip
    seeds = read_seeds(seeds_path, id_column, text_column)
    lo, hi = stage.shard_bounds(len(seeds), shard)
    seeds = seeds[lo:hi]
    sampling = settings.sampling
    cache = ReplyCache(out.parent / f"{out.name}.cache.sqlite")
    started = time.perf_counter()
    filtered = dict.fromkeys(FILTERS, 0)
    counts = {"rows": 0, "cached": 0, "requested": 0}
    distinct = DistinctNgrams()
    seen: set[str] = set()
    lsh, minhash = _near_duplicate_index(settings.near_duplicate)

    def judge(sid: str, text: str, k: int, reply: Reply | str, emit_row: Emit, emit_failure: Emit) -> None:
        cid = f"{sid}-{k}"
        reason = _reject(reply, settings)
        caption = reply.text.strip() if isinstance(reply, Reply) else ""
        if reason is None and settings.dedupe:
            norm = " ".join(caption.lower().split())
            if norm in seen:
                reason = "duplicate"
            else:
                signature = minhash(norm)
                if lsh is not None and lsh.query(signature):
                    reason = "near_duplicate"
                else:
                    seen.add(norm)
                    if lsh is not None:
                        lsh.insert(cid, signature)
        if reason is None:
            emit_row({"id": cid, "caption": caption, "seed_id": sid, "seed": text})
            counts["rows"] += 1
            distinct.add(caption)
        else:
            filtered[reason.split(":")[0]] += 1
            raw = reply.text if isinstance(reply, Reply) else reply
            emit_failure({"id": cid, "seed_id": sid, "reason": reason, "reply": raw})

    async def run(emit_row: Emit, emit_failure: Emit) -> None:
        """Window by window: ask for (or find cached) every reply of the window, then judge them in seed order."""
        with progress("captions", len(seeds) * settings.per_seed) as advance:
            counter = ReplyCounter(advance)
            for start in range(0, len(seeds), settings.window):
                jobs, keys = [], []
                for s, (sid, text) in enumerate(seeds[start : start + settings.window], start=lo + start):
                    messages = _messages(template, text)
                    for k in range(settings.per_seed):
                        seed = sampling.seed + s * settings.per_seed + k  # the sample's own, shard-independent
                        key = request_key(backend.name, messages, sampling, seed)
                        jobs.append((key, messages, seed))
                        keys.append((sid, text, k, key))
                replies, hits = await gather_replies(
                    backend, jobs, sampling, cache, concurrency=settings.concurrency, on_reply=counter
                )
                counts["cached"] += hits
                counts["requested"] += len(jobs) - hits
                for sid, text, k, key in keys:
                    judge(sid, text, k, replies[key], emit_row, emit_failure)

    stage.run_streamed(run, out, backend, cache)
    summary = SynthSummary(counts["rows"], sum(filtered.values()), counts["cached"], counts["requested"], filtered,
                           time.perf_counter() - started, distinct.figures())  # fmt: skip
    stage.write_meta(out, template, backend, settings, seeds=len(seeds), shard=list(shard),
                     summary=asdict(summary), command=command, prompt_source=prompt_source)  # fmt: skip
    return summary


def _reject(reply: Reply | str, settings: CaptionSettings) -> str | None:
    if isinstance(reply, str):
        return reply
    text = reply.text.strip()
    if not text:
        return "empty"
    if reply.finish_reason == "length":
        return "truncated"
    if REFUSAL.search(text):
        return "refusal"
    words = len(text.split())
    if words < settings.min_words:
        return "too_short"
    if words > settings.max_words:
        return "too_long"
    return None


def _near_duplicate_index(threshold: float) -> tuple[Any, Any]:
    """A MinHash LSH index over word 3-grams (``datasketch``), or (None, no-op) when the threshold is 1."""
    if threshold >= 1:
        return None, lambda text: None
    from datasketch import MinHash, MinHashLSH

    def signature(text: str) -> Any:
        m = MinHash(num_perm=64, seed=1)
        words = text.split()
        for i in range(max(1, len(words) - 2)):
            m.update(" ".join(words[i : i + 3]).encode())
        return m

    return MinHashLSH(threshold=threshold, num_perm=64), signature
