"""Stage 2 of Unicorn: each caption turned into a multi-turn question/answer conversation about the "image"
it describes, by an LLM that sees only the caption.

The reply must be JSON, ``{"turns": [{"question": ..., "answer": ...}, ...]}`` (a bare list of turns, a
code fence or chatter around the JSON are accepted), and is validated (pydantic): non-empty strings, a
turn count within ``turns``, no question repeated within the conversation (case and spaces normalised).
Servers are asked for structured output (``response_format`` with the JSON schema); one that refuses it is
asked without, and replies are parsed either way. An invalid reply gets the validation error back as the
next user turn and the LLM tries again, up to ``max_attempts`` requests per caption; what is still invalid
goes to the failures file with its last raw reply and the reason.

Every request is cached as it completes (keyed by model, messages — the feedback turns included —,
sampling, seed and schema), so a killed run resumes where it stopped and a rerun with the same settings
gives the same rows. Outputs, written whole beside ``OUT``:

* ``OUT`` (JSONL): ``{"id": CAPTION_ID, "image": CAPTION_ID, "conversations": [{"from": "human", "value":
  "<image>\\nQ1"}, {"from": "gpt", "value": "A1"}, ...]}`` — what ``modgap train sft`` reads, joined by id to
  a store of the captions' (aligned) text embeddings;
* ``OUT.failures.jsonl``: ``id``, ``caption_id``, ``reason``, ``reply``, ``attempts``; rows + failures =
  captions;
* ``OUT.meta.json``: model, prompt hash, sampling, settings, structured-output status, counts, attempts
  needed, the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modgap.progress import ProgressFactory, silent
from modgap.synth import stage
from modgap.synth.cache import ReplyCache, request_key
from modgap.synth.llm import LocalChat, Messages, OpenAIChat
from modgap.synth.requests import ReplyCounter, gather_replies
from modgap.synth.settings import InstructionSettings
from modgap.synth.stage import Emit, read_texts

REASONS = ("request_failed", "truncated", "not_json", "invalid")
FEEDBACK = (
    "That reply cannot be used: {error}. Write the conversation again as one JSON object of the form "
    '{{"turns": [{{"question": "...", "answer": "..."}}]}} with {min_turns} to {max_turns} turns, and nothing else.'
)


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turns: list[Turn]


@dataclass
class InstructionSummary:
    rows: int
    failures: int
    cached: int  # replies found in the cache
    requested: int  # replies requested in this run
    failed: dict[str, int]  # failures by reason
    attempts: dict[str, int]  # conversations by the number of requests they needed
    mean_turns: float
    structured_output: str
    seconds: float

    def line(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.failed.items() if v) or "none"
        needed = ", ".join(f"{v} in {k}" for k, v in sorted(self.attempts.items()))
        return (
            f"{self.rows} conversations ({self.mean_turns:.1f} turns on average; attempts: {needed or '-'}), "
            f"{self.failures} failures ({reasons}); {self.cached} replies from the cache, {self.requested} requested"
        )


def json_schema(min_turns: int, max_turns: int) -> dict[str, Any]:
    """The reply's JSON schema (for ``response_format``), with the turn range."""
    schema = Conversation.model_json_schema()
    schema["properties"]["turns"].update(minItems=min_turns, maxItems=max_turns)
    return schema


def parse_conversation(text: str, min_turns: int, max_turns: int) -> tuple[list[Turn] | None, str, str]:
    """(turns, "", "") for a valid reply, else (None, reason, a message for the LLM and the failures file)."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = fenced.group(1) if fenced else text
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        return None, "not_json", "the reply holds no JSON object"
    try:
        value, _ = json.JSONDecoder().raw_decode(body, min(starts))
    except json.JSONDecodeError as e:
        return None, "not_json", f"the reply is not valid JSON ({e.msg} at character {e.pos})"
    if isinstance(value, list):
        value = {"turns": value}
    try:
        turns = Conversation.model_validate(value).turns
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}" for err in e.errors(include_url=False)[:3]
        )
        return None, "invalid", f"the JSON does not match the schema ({problems})"
    if not min_turns <= len(turns) <= max_turns:
        return None, "invalid", f"it has {len(turns)} turns; expected {min_turns} to {max_turns}"
    seen: dict[str, int] = {}
    for n, turn in enumerate(turns, 1):
        norm = " ".join(turn.question.lower().split())
        if norm in seen:
            return None, "invalid", f"turns {seen[norm]} and {n} ask the same question ({turn.question!r})"
        seen[norm] = n
    return turns, "", ""


def conversation_row(caption_id: str, turns: list[Turn]) -> dict[str, Any]:
    """A LLaVA conversation row; the image placeholder opens the first question."""
    conversations = []
    for n, turn in enumerate(turns):
        conversations.append({"from": "human", "value": ("<image>\n" if n == 0 else "") + turn.question})
        conversations.append({"from": "gpt", "value": turn.answer})
    return {"id": caption_id, "image": caption_id, "conversations": conversations}


def read_captions(
    path: str | os.PathLike, id_column: str = "id", text_column: str = "caption"
) -> list[tuple[str, str]]:
    """(id, caption) of every row; errors name the file and row (missing column, empty caption, duplicate id)."""
    return read_texts(path, id_column, text_column, "caption")


@dataclass
class _Chat:
    """One caption's conversation with the LLM so far."""

    caption_id: str
    messages: Messages
    seed: int
    attempts: int = 0
    reply: str = ""
    reason: str = ""
    turns: list[Turn] | None = None


def synth_instructions(
    backend: OpenAIChat | LocalChat,
    captions_path: str | os.PathLike,
    out: str | os.PathLike,
    settings: InstructionSettings | None = None,
    *,
    prompt: str | None = None,
    id_column: str = "id",
    text_column: str = "caption",
    shard: tuple[int, int] = (0, 1),
    command: str = "",
    progress: ProgressFactory = silent,
) -> InstructionSummary:
    """Run stage 2 (see the module docstring); returns the summary also written into ``OUT.meta.json``."""
    settings = settings or InstructionSettings()
    out = Path(out)
    template, prompt_source = stage.template(prompt, "prompts/instructions.txt", "{caption}", settings.prompt_file,
                                             backend=backend, stage="instructions")  # fmt: skip
    captions = read_captions(captions_path, id_column, text_column)
    lo, hi = stage.shard_bounds(len(captions), shard)
    lo_turns, hi_turns = settings.min_turns, settings.max_turns
    filled = template.replace("{min_turns}", str(lo_turns)).replace("{max_turns}", str(hi_turns))
    captions = captions[lo:hi]
    schema = json_schema(lo_turns, hi_turns)
    schema_tag = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]
    sampling = settings.sampling
    cache = ReplyCache(out.parent / f"{out.name}.cache.sqlite")
    started = time.perf_counter()
    counts = {"rows": 0, "turns": 0, "cached": 0, "requested": 0}
    failed = dict.fromkeys(REASONS, 0)
    attempts: Counter[str] = Counter()

    async def converse(chats: list[_Chat], counter: ReplyCounter, advance: Any) -> None:
        """Up to ``max_attempts`` rounds: every pending chat asked at once, invalid replies answered with
        their error and asked again in the next round."""
        pending = chats
        for _ in range(settings.max_attempts):
            jobs = [
                (request_key(backend.name, c.messages, sampling, c.seed, schema_tag), c.messages, c.seed)
                for c in pending
            ]
            replies, hits = await gather_replies(
                backend, jobs, sampling, cache, concurrency=settings.concurrency,
                on_reply=lambda r: counter(r, 0), schema=schema,
            )  # fmt: skip
            counts["cached"] += hits
            counts["requested"] += len(jobs) - hits
            retry = []
            for chat, (key, _, _) in zip(pending, jobs, strict=True):
                chat.attempts += 1
                reply = replies[key]
                if isinstance(reply, str):  # refused by the server: retrying cannot help
                    chat.reason, chat.reply = reply, ""
                    continue
                chat.reply = reply.text
                turns, reason, error = parse_conversation(reply.text, lo_turns, hi_turns)
                if turns is not None:
                    chat.turns, chat.reason = turns, ""
                    continue
                if reply.finish_reason == "length":
                    reason = "truncated"
                    error = f"it was cut off at {sampling.max_tokens} tokens ({error}); write fewer words"
                chat.reason = f"{reason}: {error}"
                feedback = FEEDBACK.format(error=error, min_turns=lo_turns, max_turns=hi_turns)
                chat.messages = [
                    *chat.messages,
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": feedback},
                ]
                retry.append(chat)
            advance(len(pending) - len(retry))
            pending = retry
            if not pending:
                break
        advance(len(pending))

    async def run(emit_row: Emit, emit_failure: Emit) -> None:
        with progress("conversations", len(captions)) as advance:
            counter = ReplyCounter(advance)
            for start in range(0, len(captions), settings.window):
                chats = [
                    _Chat(cid, [{"role": "user", "content": filled.replace("{caption}", text)}], sampling.seed + i)
                    for i, (cid, text) in enumerate(captions[start : start + settings.window], start=lo + start)
                ]
                await converse(chats, counter, advance)
                for chat in chats:
                    if chat.turns is not None:
                        emit_row(conversation_row(chat.caption_id, chat.turns))
                        counts["rows"] += 1
                        counts["turns"] += len(chat.turns)
                        attempts[str(chat.attempts)] += 1
                    else:
                        failed[chat.reason.split(":")[0]] += 1
                        emit_failure({"id": chat.caption_id, "caption_id": chat.caption_id, "reason": chat.reason,
                                      "reply": chat.reply, "attempts": chat.attempts})  # fmt: skip

    stage.run_streamed(run, out, backend, cache)
    mean_turns = counts["turns"] / counts["rows"] if counts["rows"] else 0.0
    summary = InstructionSummary(counts["rows"], sum(failed.values()), counts["cached"], counts["requested"], failed,
                                 dict(attempts), mean_turns, backend.structured,
                                 time.perf_counter() - started)  # fmt: skip
    stage.write_meta(out, template, backend, settings, captions=len(captions), shard=list(shard),
                     summary=asdict(summary), command=command, prompt_source=prompt_source)  # fmt: skip
    return summary
