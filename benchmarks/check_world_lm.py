"""The second world's LM: does it restate a held-out caption with the same attributes (the in-context copy
that lets a projector steer it in ReVision)? Greedy decoding of 200 restatements of captions of scenes no
training text came from; per main-object attribute, the share of captions naming it whose restatement names
the same value.

Usage: python benchmarks/check_world_lm.py [builtin:tiny-lm-relations | DIR]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modgap.hub import resolve
from modgap.world import relations_scene as rw
from modgap.world.lm import RESTATE


def main() -> None:
    path = resolve(sys.argv[1] if len(sys.argv) > 1 else "builtin:tiny-lm-relations")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    scenes = rw.make_scenes(200, 0, "lm-check")
    rng = np.random.default_rng(0)
    captions = [rw.caption(s, rng) for s in scenes]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{c} {RESTATE}"}], tokenize=False,
                                             add_generation_prompt=True) for c in captions]  # fmt: skip
    tokenizer.padding_side = "left"
    replies: list[str] = []
    for s in range(0, len(prompts), 50):
        batch = tokenizer(prompts[s : s + 50], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=40, do_sample=False)
        replies += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    hits = dict.fromkeys(rw.ATTRIBUTES, 0)
    said = dict.fromkeys(rw.ATTRIBUTES, 0)
    for caption, reply in zip(captions, replies, strict=True):
        given, back = rw.parse_caption(caption), rw.parse_caption(reply)
        for a in rw.ATTRIBUTES:
            if given[a] is not None:
                said[a] += 1
                hits[a] += given[a] == back[a]
    print("restated with the same value:", {a: round(hits[a] / max(1, said[a]), 3) for a in rw.ATTRIBUTES})
    for caption, reply in list(zip(captions, replies, strict=True))[:3]:
        print(f"  {caption} -> {reply}")


if __name__ == "__main__":
    main()
