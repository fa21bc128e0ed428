"""Stage-1 synthesis throughput against a real server (`transformers serve` on the built-in LM), and the local
backend batched vs one prompt at a time. One run on this machine; prints rows/s, completion tokens/s and the
client's own CPU seconds per request (the server runs in another process).

Usage: python benchmarks/bench_synth.py [--seeds 96] [--max-tokens 32] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from modgap.world.scene import COLOURS, SHAPES

LM = resolve("builtin:tiny-lm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(backend: OpenAIChat | LocalChat, seeds: Path, out: Path, concurrency: int, max_tokens: int) -> str:
    settings = CaptionSettings(per_seed=1, min_words=1, dedupe=False, concurrency=concurrency,
                               temperature=1.0, max_tokens=max_tokens)  # fmt: skip
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    synth_captions(backend, seeds, out, settings)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    meta = json.loads(out.with_suffix(".meta.json").read_text())["summary"]
    n = meta["requested"]
    tokens = sum(len(r["caption"].split()) for r in map(json.loads, out.read_text().splitlines()))
    return f"{n / wall:6.1f} rows/s, ~{tokens / wall:7.1f} words/s, client CPU {1000 * cpu / n:5.1f} ms/request"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    seeds = work / "seeds.jsonl"
    colours = list(COLOURS)
    seeds.write_text("".join(
        json.dumps({"id": f"s{i}", "text": f"a {colours[i % 6]} {SHAPES[i % 5]}"}) + "\n" for i in range(args.seeds)
    ))  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "transformers.cli.transformers", "serve", LM, "--host", "127.0.0.1", "--port",
         str(port), "--device", "cpu"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v1"
        for c in (1, 4, 16):  # each level asks for new samples (its own output, its own cache)
            figures = run(OpenAIChat(LM, [url]), seeds, work / f"c{c}.jsonl", c, args.max_tokens)
            print(f"transformers serve, --concurrency {c:2d}: {figures}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for batch in (1, 16):
        figures = run(LocalChat(LM, batch_size=batch), seeds, work / f"b{batch}.jsonl", 1, args.max_tokens)
        print(f"builtin:tiny-lm local, batch {batch:2d}:        {figures}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
