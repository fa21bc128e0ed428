"""Many requests to one backend, each answered from the reply cache or asked and cached as it arrives.

Shared by the stages: a job is ``(key, messages, seed)``; the key (:func:`~modgap.synth.cache.request_key`)
names everything that determines the reply, so a rerun after ``kill -9``, Ctrl-C or a dead server sends
only the jobs whose replies never came back. A request the server refuses maps to a string reason (listed
as a failure, not cached: a rerun asks again); a server that stops answering raises
:class:`~modgap.synth.llm.ServerUnavailable` and stops the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from modgap.errors import ModgapError
from modgap.synth.cache import ReplyCache
from modgap.synth.llm import LocalChat, Messages, OpenAIChat, Reply, RequestFailed, Sampling

Job = tuple[str, Messages, int]


class ReplyCounter:
    """What the progress bar shows beside the count: tokens/s and failures so far."""

    def __init__(self, advance: Callable[..., None]):
        self.advance, self.tokens, self.failed, self.started = advance, 0, 0, time.perf_counter()

    def __call__(self, reply: Reply | str, steps: int = 1) -> None:
        if isinstance(reply, Reply):
            self.tokens += reply.completion_tokens
        else:
            self.failed += 1
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.advance(steps, f"{rate:,.0f} tok/s · {self.failed} failed")


async def gather_replies(
    backend: OpenAIChat | LocalChat,
    jobs: Sequence[Job],
    sampling: Sampling,
    cache: ReplyCache,
    *,
    concurrency: int,
    on_reply: Callable[[Reply | str], None],
    schema: dict[str, Any] | None = None,
) -> tuple[dict[str, Reply | str], int]:
    """Replies of ``jobs`` by key and how many came from the cache. ``on_reply`` is called once per job
    (cached ones included) as its reply is known; ``schema`` asks servers for structured output."""
    out: dict[str, Reply | str] = {}
    todo = []
    for key, messages, seed in jobs:
        hit = cache.get(key)
        if hit is not None:
            out[key] = hit
            on_reply(hit)
        else:
            todo.append((key, messages, seed))
    cached = len(out)
    if not todo:
        return out, cached
    if isinstance(backend, LocalChat):
        for s in range(0, len(todo), backend.batch_size):
            part = todo[s : s + backend.batch_size]
            # In this thread, not a worker: torch's OpenMP team belongs to the thread that made it, and a
            # batch generated from a worker thread ran ~20 % slower here (measured); nothing else is waiting.
            replies = backend.chat_batch([m for _, m, _ in part], sampling, part[0][2])
            for (key, _, _), reply in zip(part, replies, strict=True):
                cache.put(key, reply)
                out[key] = reply
                on_reply(reply)
        return out, cached

    await backend.check()
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str, messages: Messages, seed: int) -> None:
        async with gate:
            try:
                reply: Reply | str = await backend.chat(messages, sampling, seed, schema)
            except RequestFailed as e:
                reply = f"request_failed: {e}"
            if isinstance(reply, Reply):
                cache.put(key, reply)
            out[key] = reply
            on_reply(reply)

    await asyncio.gather(*(one(*job) for job in todo))
    refusals = {r for r in out.values() if isinstance(r, str)}
    if cached == 0 and len(refusals) == 1 and all(isinstance(r, str) for r in out.values()):
        # Every request of the window refused for one reason (a wrong model name, a bad key): a setting, not
        # the data; stop instead of listing every input as a failure and ending "successfully" with 0 rows.
        raise ModgapError(f"every one of {len(out)} requests failed the same way: {refusals.pop()}; nothing written")
    return out, cached
