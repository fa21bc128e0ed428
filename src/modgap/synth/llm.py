"""LLM backends for data synthesis behind one small interface: chat messages in, a reply out.

* ``openai:MODEL`` (with one or more base URLs): any OpenAI-compatible server — vLLM, SGLang, llama.cpp,
  TGI, ``transformers serve``, hosted APIs — through the official ``openai`` async client. Requests are
  spread round-robin over the URLs; failures that may pass (connection errors, timeouts, 429, 5xx) are
  retried with exponential back-off and full jitter, a ``Retry-After`` header wins over the computed wait;
  other 4xx are not retried. The key comes from an environment variable (absent is fine for local servers).
* ``hf:PATH`` / ``builtin:NAME``: a local 🤗 causal LM, batched generation through its chat template.

Every request carries its own seed (the sample's), so a server that honours seeds gives the same reply
whenever the same sample is asked for again; one request per sample (``n`` = 1) keeps that true on servers
that ignore ``n``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modgap.errors import ModgapError
from modgap.synth.settings import LLMSettings, Sampling

CONNECT_TIMEOUT = 10.0  # seconds to open a connection; --timeout bounds the wait for a reply

Messages = list[dict[str, str]]


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestFailed(ModgapError):
    """A request the server refused (an error that retrying cannot fix): listed as a failure of its sample."""


class ServerUnavailable(ModgapError):
    """The server stopped answering (retries spent on connection errors, timeouts, 429 or 5xx): the run stops;
    replies already received are cached, so rerunning resumes."""


class OpenAIChat:
    """Chat completions from OpenAI-compatible servers (see the module docstring)."""

    def __init__(
        self,
        model: str,
        base_urls: Sequence[str] | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ):
        from openai import AsyncOpenAI, Timeout

        self.name = f"openai:{model}"
        self.model = model
        self.model_id = model  # what the server calls it (`transformers serve`: the model's directory)
        self.base_urls = list(base_urls or [os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")])
        key = os.environ.get(api_key_env) or "EMPTY"  # local servers need none
        # A dead host is found in seconds (connect), a slow reply may take the whole ``timeout`` (read).
        limits = Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
        self.clients = [AsyncOpenAI(base_url=u, api_key=key, max_retries=0, timeout=limits) for u in self.base_urls]
        self.max_attempts, self.backoff, self.max_backoff = max_attempts, backoff, max_backoff
        self._next = 0
        self.retries = 0  # requests sent again after a failure that may pass
        # Structured output: "sent" while the servers accept ``response_format``; the server's refusal once one
        # refuses it (the run goes on parsing and retrying instead).
        self.structured = "sent"

    async def check(self, timeout: float = 10.0) -> None:
        """Fail fast, with the URL, when a server cannot be reached at all (any HTTP answer will do)."""
        import openai

        for client in self.clients:
            try:
                await client.with_options(timeout=timeout).models.list()
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                raise ModgapError(f"cannot reach the LLM server at {client.base_url} ({e})") from e
            except openai.APIStatusError:
                pass  # it answered

    async def chat(
        self, messages: Messages, sampling: Sampling, seed: int, schema: dict[str, Any] | None = None
    ) -> Reply:
        """One reply. With a JSON ``schema`` the request asks for structured output (``response_format``); a
        server that refuses it (HTTP 400/422) is asked again without, and so are later requests."""
        import openai

        client = self.clients[self._next % len(self.clients)]
        self._next += 1
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            structured = schema is not None and self.structured == "sent"
            extra: dict[str, Any] = {}
            if structured:
                extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
            try:
                r = await client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    seed=seed,
                    n=1,
                    **extra,
                )
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError) as e:  # fmt: skip
                if attempt == self.max_attempts:
                    raise ServerUnavailable(
                        f"{client.base_url}: {type(e).__name__} after {attempt} attempts ({e}); the replies received "
                        "so far are cached: rerun the same command to resume"
                    ) from e
                self.retries += 1
                await asyncio.sleep(self._wait(attempt, e))
            except (json.JSONDecodeError, openai.APIResponseValidationError) as e:
                # HTTP 200 whose body is not a chat completion (a proxy's page, a broken server): may pass.
                if attempt == self.max_attempts:
                    raise RequestFailed(f"the server's answer is not a chat completion ({e})") from e
                self.retries += 1
                await asyncio.sleep(self._wait(attempt, e))
            except openai.APIStatusError as e:
                if e.status_code >= 500:
                    if attempt == self.max_attempts:
                        raise ServerUnavailable(
                            f"{client.base_url}: HTTP {e.status_code} after {attempt} attempts"
                        ) from e
                    self.retries += 1
                    await asyncio.sleep(self._wait(attempt, e))
                    continue
                if structured and e.status_code in (400, 422):
                    self.structured = f"refused by the server (HTTP {e.status_code}: {e.message})"
                    attempt -= 1  # the same request without response_format; not a failed attempt
                    continue
                raise RequestFailed(f"HTTP {e.status_code}: {e.message}") from e
            else:
                choices = getattr(r, "choices", None)
                if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
                    if attempt == self.max_attempts:
                        raise RequestFailed(f"the server's answer has no choices ({str(r)[:200]!r})")
                    self.retries += 1
                    await asyncio.sleep(self._wait(attempt, ValueError("no choices")))
                    continue
                choice = choices[0]
                usage = r.usage
                return Reply(
                    choice.message.content or "",
                    choice.finish_reason,
                    usage.prompt_tokens if usage else 0,
                    usage.completion_tokens if usage else 0,
                )
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, error: Exception) -> float:
        response = getattr(error, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                return min(float(header), self.max_backoff)
            except ValueError:
                pass  # an HTTP date: fall back to back-off
        return random.uniform(0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))  # full jitter

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


class LocalChat:
    """A local 🤗 causal LM (a directory, or a ``.gguf`` file). Batches of prompts are generated together (left
    padding); sampling draws from one generator seeded by the batch's first sample, so replies are
    reproducible for the same batches.

    A base model without a chat template runs as a completion model: the messages' contents, joined by blank
    lines, are the prompt (write few-shot prompt templates for it), and the reply ends at the first line
    break."""

    def __init__(self, path: str, *, device: str = "cpu", batch_size: int = 16, trust_remote_code: bool = False):
        from modgap.hub import load_llm, load_tokenizer

        self.name = self.model_id = path
        self.model = load_llm(path, trust_remote_code=trust_remote_code).to(device).eval()
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.completion = not getattr(self.tokenizer, "chat_template", None)
        self.device, self.batch_size = device, batch_size
        self.retries = 0
        self.structured = "not available (local backend: replies are parsed and retried)"

    async def check(self, timeout: float = 10.0) -> None:
        return None

    def chat_batch(self, prompts: Sequence[Messages], sampling: Sampling, seed: int) -> list[Reply]:
        import torch

        if self.completion:
            texts = ["\n\n".join(m["content"] for m in messages) for messages in prompts]
        else:
            texts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        finally:
            self.tokenizer.padding_side = side
        stop = {"stop_strings": ["\n"], "tokenizer": self.tokenizer} if self.completion else {}
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature or None,
                top_p=sampling.top_p if sampling.temperature > 0 else None,
                max_new_tokens=sampling.max_tokens,
                pad_token_id=pad,
                **stop,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        replies = []
        eos = self.tokenizer.eos_token_id
        for row, mask in zip(new.tolist(), enc["attention_mask"], strict=True):
            ended = eos in row
            used = row[: row.index(eos) + 1] if ended else row  # what follows the end is padding
            text = self.tokenizer.decode(used, skip_special_tokens=True)
            if self.completion and "\n" in text.lstrip("\n"):
                text, ended = text.lstrip("\n").split("\n", 1)[0], True
            replies.append(Reply(text.strip(), "stop" if ended else "length", int(mask.sum()), len(used)))
        return replies

    async def close(self) -> None:
        return None


def load_llm_backend(
    spec: str,
    *,
    base_urls: Sequence[str] | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 120.0,
    max_attempts: int = 6,
    device: str = "cpu",
    batch_size: int = 16,
    trust_remote_code: bool = False,
) -> OpenAIChat | LocalChat:
    """``openai:MODEL`` (with ``base_urls``), ``hf:PATH`` or ``builtin:NAME``."""
    kind, sep, rest = spec.partition(":")
    if kind == "openai" and sep and rest:
        return OpenAIChat(rest, base_urls, api_key_env=api_key_env, timeout=timeout, max_attempts=max_attempts)
    if base_urls:
        raise ModgapError(f"--base-url is for openai:MODEL backends, not {spec!r}")
    if kind == "builtin":
        from modgap.hub import resolve

        backend = LocalChat(resolve(spec), device=device, batch_size=batch_size)
        backend.name = spec
        return backend
    if kind == "hf" and rest:
        return LocalChat(rest, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    raise ModgapError(f"unknown LLM {spec!r}; expected openai:MODEL (with --base-url), hf:PATH or builtin:NAME")


def open_backend(settings: LLMSettings) -> OpenAIChat | LocalChat:
    """The backend ``settings`` (the ``llm`` section, or the commands' backend options) describe."""
    return load_llm_backend(
        settings.model,
        base_urls=settings.base_urls or None,
        api_key_env=settings.api_key_env,
        timeout=settings.timeout,
        max_attempts=settings.request_attempts,
        device=settings.device,
        batch_size=settings.batch_size,
    )
