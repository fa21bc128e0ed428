"""Plain next-token training of a causal LM on texts (the built-in world's LM, test fixtures).

Single-process and deterministic: the same texts, seed and settings give the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from modgap.errors import ModgapError
from modgap.progress import ProgressFactory, silent


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

    from modgap.store.store import atomic_output_dir

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
    with atomic_output_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return losses
