"""Small causal LMs built from configs and saved in 🤗 format, loadable like any local checkpoint.

Used by the tests and as the starting point of the built-in world's LM. The tokenizer is word-level,
trained offline with 🤗 tokenizers, and carries a chat template with its own role tokens, as chat
models do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL = ["<pad>", "<unk>", "<s>", "<|end|>", *ROLE_TOKENS]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_WORD = re.compile(r"\w+|[^\w\s]+")  # the split of the `Whitespace` pre-tokenizer


def corpus_words(corpus: Iterable[str]) -> list[str]:
    """The vocabulary a word-level tokenizer with a ``Whitespace`` pre-tokenizer sees in ``corpus``."""
    return sorted({w for text in corpus for w in _WORD.findall(text.lower())})


def build_chat_tokenizer(corpus: Iterable[str], max_length: int = 512, chat_template: str | None = CHAT_TEMPLATE):
    """Word-level PreTrainedTokenizerFast over ``corpus`` with role tokens and (optionally) a chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *corpus_words(corpus)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, glues punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=max_length,
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def save_tiny_llm(
    path: str | Path,
    corpus: Iterable[str],
    *,
    kind: str = "llama",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_length: int = 256,
    chat_template: str | None = CHAT_TEMPLATE,
    seed: int = 0,
) -> Path:
    """Save a random-initialised Llama (``kind="llama"``) or Qwen2 (``"qwen2"``) causal LM with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = build_chat_tokenizer(corpus, max_length, chat_template)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"unknown tiny LLM kind {kind!r} (llama or qwen2)")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
