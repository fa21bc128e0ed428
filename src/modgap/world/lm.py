"""Train causal LMs on plain text (:func:`train_causal_lm`, also the tests' fixture trainer) and the built-in
tiny chat LM on world language (🤗 Llama config, word-level tokenizer).

It learns the captions as replies to captioning prompts, and to restate a description given in the
user turn in another phrasing: the in-context use of content that a real LLM brings to ReVision, and
what lets a projector steer a frozen LM. It also learns what a real LLM brings to Unicorn from its
knowledge of the world: to expand a sparse seed ("a red shape") into a full caption, to write question/answer
turns about a caption as the JSON ``synth instructions`` asks for (the JSON pieces are tokens), and to answer
a question about a caption given in the user turn. Copying arrives abruptly: colour, size and position within a few
hundred steps, shape only after ~1000 steps (its loss sits at log 5 until then); a run of 1500 steps at 2e-3
never learned to copy shapes. With five tasks the default budget is 5000 steps at lr 1e-3.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from modgap.errors import ModgapError
from modgap.files import atomic_output_dir
from modgap.hub import MODEL_RECORD
from modgap.mllm.chat import caption_messages
from modgap.progress import ProgressFactory, silent
from modgap.world.scene import (
    EXPAND_PROMPT,
    JSON_PIECES,
    PROMPT,
    QA_PROMPT,
    RESTATE,
    caption,
    conversation_json,
    make_scenes,
    question_answers,
    sparse_seed,
)
from modgap.world.tiny import build_chat_tokenizer, save_tiny_llm

# Sampling by default, so that a server honouring the model's generation config (`transformers serve`) samples
# at the request's temperature instead of decoding greedily whatever the request asks.
SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 1.0}


# The prompts the LM was trained on, by synthesis stage, declared in its record (``modgap synth`` uses them when
# given none: :func:`modgap.hub.declared_prompts`).
TRAINED_PROMPTS = {"captions": EXPAND_PROMPT, "instructions": QA_PROMPT}



TASKS = 5  # texts per scene


def lm_texts(n: int, seed: int, tokenizer, world: str = "shapes") -> list[str]:
    """The first world: ``TASKS`` chat texts per scene: caption, restate, expand a seed, write a conversation,
    answer a question. The second (``relations``): caption and restate (what ReVision needs of the LM)."""
    if world == "relations":
        return relations_lm_texts(n, seed, tokenizer)
    rng = np.random.default_rng(seed)
    texts = []

    def chat(reply: str, user: str) -> str:
        return _chat(tokenizer, reply, user)

    for scene in make_scenes(n, seed, "lm"):
        a, b = caption(scene, rng=rng), caption(scene, rng=rng)
        texts.append(chat(a, PROMPT))
        texts.append(chat(b, f"{a} {RESTATE}"))
        texts.append(chat(b, EXPAND_PROMPT.replace("{seed}", sparse_seed(scene, rng))))
        texts.append(chat(conversation_json(scene, rng), QA_PROMPT.replace("{caption}", a)))
        asked = question_answers(scene)
        _, question, answer = asked[int(rng.integers(len(asked)))]
        texts.append(chat(f"{answer} .", f"{a} {question}"))
    return texts


def _chat(tokenizer, reply: str, user: str) -> str:
    """One training text: ``user``'s turn answered by ``reply``, in the tokenizer's chat template."""
    return tokenizer.apply_chat_template(caption_messages(reply, user), tokenize=False)


def relations_lm_texts(n: int, seed: int, tokenizer) -> list[str]:
    """Two chat texts per second-world scene: a caption as the reply to the captioning prompt, and another
    phrasing of a caption given in the user turn."""
    from modgap.world import relations_scene

    rng = np.random.default_rng(seed)
    texts = []
    for scene in relations_scene.make_scenes(n, seed, "lm"):
        a, b = relations_scene.caption(scene, rng), relations_scene.caption(scene, rng)
        texts.append(_chat(tokenizer, a, relations_scene.PROMPT))
        texts.append(_chat(tokenizer, b, f"{a} {RESTATE}"))
    return texts


WORLD_TASKS = {"shapes": TASKS, "relations": 2}


def train_causal_lm(
    llm_dir: str | Path,
    texts: Sequence[str],
    out: str | Path,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 20,
    seed: int = 0,
    progress: ProgressFactory = silent,
) -> list[float]:
    """Train the model in ``llm_dir`` on ``texts`` (already formatted; special tokens as text) and save it,
    with its tokenizer, to ``out``. Returns the loss of every step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    if not texts:
        raise ModgapError("no texts to train the LM on")
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir), local_files_only=True, dtype=torch.float32)
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1 << 20 else 512
    encoded = [tokenizer(t, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"] for t in texts]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = []
    model.train()
    order: list[int] = []
    with progress("training LM", steps) as advance:
        for _ in range(steps):
            if len(order) < batch_size:
                order += torch.randperm(len(encoded), generator=g).tolist() * math.ceil(batch_size / len(encoded))
            idx, order = order[:batch_size], order[batch_size:]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, i in enumerate(idx):
                ids[j, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[j, : len(encoded[i])] = 1
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            advance(1)
    with atomic_output_dir(out, overwrite=True, markers=("config.json",), inputs=[llm_dir]) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return losses


def train_world_lm(
    out: str | Path,
    *,
    world: str = "shapes",
    texts: int = 100000,
    steps: int = 5000,
    batch_size: int = 32,
    lr: float = 1e-3,
    warmup: int = 100,
    width: int = 128,
    layers: int = 4,
    seed: int = 0,
    progress: ProgressFactory = silent,
) -> dict:
    from modgap.world.worlds import get_world

    kind = get_world(world)
    phrases = JSON_PIECES if world == "shapes" else []
    words = [*kind.vocabulary(), *RESTATE.split(), "<image>"]
    tokenizer = build_chat_tokenizer(words, max_length=256, phrases=phrases)
    corpus = lm_texts(texts // WORLD_TASKS[world], seed, tokenizer, world)
    with atomic_output_dir(out, overwrite=True, markers=(MODEL_RECORD,)) as tmp:
        save_tiny_llm(tmp / "init", words, hidden=width, layers=layers, heads=4, max_length=256, seed=seed,
                      phrases=phrases)  # fmt: skip
        losses = train_causal_lm(
            tmp / "init",
            corpus,
            tmp / "trained",
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup=warmup,
            seed=seed,
            progress=progress,
        )
        for f in (tmp / "trained").iterdir():
            f.rename(tmp / f.name)
        for d in ("init", "trained"):
            for f in (tmp / d).glob("*"):
                f.unlink()
            (tmp / d).rmdir()
        provenance = {
            "command": "modgap world train-lm"
            + (f" --world {world}" if world != "shapes" else "")
            + f" --texts {texts} --steps {steps} --seed {seed}",
            "seed": seed,
            **({"world": world} if world != "shapes" else {}),
            "texts": len(corpus),
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "warmup": warmup,
            "width": width,
            "layers": layers,
            "final_loss": float(np.mean(losses[-20:])),
            **({"prompts": TRAINED_PROMPTS} if world == "shapes" else {}),
        }
        (tmp / MODEL_RECORD).write_text(json.dumps(provenance, indent=2) + "\n")
        generation = json.loads((tmp / "generation_config.json").read_text())
        (tmp / "generation_config.json").write_text(json.dumps({**generation, **SAMPLING}, indent=2) + "\n")
    return provenance
