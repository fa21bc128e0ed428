"""Stage-1 synthesis throughput at saturation (issue 22): `modgap synth captions` against a server that
batches (`transformers serve --continuous-batching` on the built-in LM) beside a minimal raw async client
driving the same server with the same prompts and sampling and doing nothing else, at concurrency 1, 4, 16,
32 and 64; for scale, the same model's offline batched generation; and the local `hf:` backend against bare
`model.generate` on the same batches.

Ratios are taken within one run: at each level the raw client and modgap alternate for --rounds rounds (each
round asks for new samples: new seeds, nothing cached) and the best of each is compared. Prints rows/s.

Usage: python benchmarks/bench_synth.py [--seeds 128] [--max-tokens 32] [--rounds 3] [--levels 1 4 16 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from modgap.hub import resolve
from modgap.synth.captions import CaptionSettings, synth_captions
from modgap.synth.llm import LocalChat, OpenAIChat
from modgap.synth.stage import template
from modgap.world.scene import COLOURS, SHAPES

LM = resolve("builtin:tiny-lm")
TEMPERATURE, TOP_P = 1.0, 0.95


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", LM, "--host", "127.0.0.1", "--port",
         str(port), "--device", "cpu", "--continuous-batching"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError("transformers serve did not come up")


def settings(concurrency: int, max_tokens: int, seed: int, batch_size: int = 16) -> CaptionSettings:
    return CaptionSettings(per_seed=1, min_words=1, dedupe=False, concurrency=concurrency, temperature=TEMPERATURE,
                           top_p=TOP_P, max_tokens=max_tokens, seed=seed)  # fmt: skip


def modgap_rows_per_second(backend, seeds: Path, out: Path, cfg: CaptionSettings) -> float:
    started = time.perf_counter()
    summary = synth_captions(backend, seeds, out, cfg)
    wall = time.perf_counter() - started
    assert summary.cached == 0, "a round must ask for new samples"
    return summary.requested / wall


async def _raw(url: str, prompts: list[list[dict]], concurrency: int, max_tokens: int, seed: int) -> float:
    """The least a client can do: one request per prompt, ``concurrency`` in flight, replies kept as text."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    gate = asyncio.Semaphore(concurrency)
    replies: list[str | None] = [None] * len(prompts)

    async def one(i: int, messages: list[dict]) -> None:
        async with gate:
            r = await client.chat.completions.create(model=LM, messages=messages, temperature=TEMPERATURE,
                                                     top_p=TOP_P, max_tokens=max_tokens, seed=seed + i)  # fmt: skip
            replies[i] = r.choices[0].message.content

    started = time.perf_counter()
    await asyncio.gather(*(one(i, m) for i, m in enumerate(prompts)))
    wall = time.perf_counter() - started
    await client.close()
    assert all(r is not None for r in replies)
    return len(prompts) / wall


def bare_generate_rows_per_second(prompts: list[list[dict]], batch: int, max_tokens: int) -> float:
    """What a user's own loop does on batches of the same prompts: render them with the chat template,
    tokenise, `model.generate` (the floor of the local backend, which also validates, caches and writes)."""
    import torch

    from modgap.hub import load_llm, load_tokenizer

    model, tok = load_llm(LM).eval(), load_tokenizer(LM)
    tok.padding_side = "left"
    started = time.perf_counter()
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    for s in range(0, len(texts), batch):
        enc = tok(texts[s : s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(s)
        with torch.no_grad():
            model.generate(**enc, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, max_new_tokens=max_tokens,
                           pad_token_id=tok.pad_token_id)  # fmt: skip
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    seeds = work / "seeds.jsonl"
    colours = list(COLOURS)
    texts = [f"a {colours[i % 6]} {SHAPES[i % 5]}" for i in range(args.seeds)]
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    # The messages synth sends: the template the model declares, the seed in it.
    prompt, source = template(None, "prompts/caption.txt", "{seed}", None, backend=OpenAIChat(LM, [url]),
                              stage="captions")  # fmt: skip
    prompts = [[{"role": "user", "content": prompt.replace("{seed}", t)}] for t in texts]
    print(f"{args.seeds} seeds, {args.max_tokens} new tokens at most, temperature {TEMPERATURE}, top-p {TOP_P}; "
          f"prompt: {source}; best of {args.rounds} alternating rounds\n")  # fmt: skip
    server = start_server(port)
    try:
        asyncio.run(_raw(url, prompts[:8], 8, args.max_tokens, 10**6))  # warm-up
        print("| concurrency | raw async client rows/s | modgap synth captions rows/s | modgap / raw |")
        print("|---|---|---|---|")
        for c in args.levels:
            raw, ours = [], []
            for r in range(args.rounds):
                seed = 1000 * (c * args.rounds + r)
                raw.append(asyncio.run(_raw(url, prompts, c, args.max_tokens, seed)))
                out = work / f"c{c}-r{r}.jsonl"
                ours.append(modgap_rows_per_second(OpenAIChat(LM, [url]), seeds, out,
                                                   settings(c, args.max_tokens, seed + 1)))  # fmt: skip
            print(f"| {c} | {max(raw):.1f} | {max(ours):.1f} | {max(ours) / max(raw):.2f} |", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print("\n| local (no server) | rows/s | modgap / bare |")
    print("|---|---|---|")
    for batch in (16, 64):
        bare, ours = [], []
        for r in range(args.rounds):
            bare.append(bare_generate_rows_per_second(prompts, batch, args.max_tokens))
            out = work / f"local-b{batch}-r{r}.jsonl"
            cfg = settings(1, args.max_tokens, 10**5 + r)
            ours.append(modgap_rows_per_second(LocalChat(LM, batch_size=batch), seeds, out, cfg))
        print(f"| chat template + `model.generate`, batches of {batch} | {max(bare):.1f} | |")
        print(f"| `synth captions --llm builtin:tiny-lm --batch-size {batch}` | {max(ours):.1f} | "
              f"{max(ours) / max(bare):.2f} |", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
