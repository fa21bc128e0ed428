"""Tiny 🤗 models built from configs and saved in 🤗 format, loadable like any local checkpoint.

The starting points of the built-in world's models, and the fixtures of the tests: a causal LM (Llama or
Qwen2) with a word-level chat tokenizer, and a dual encoder (CLIP or SigLIP) with a word-level tokenizer
whose end-of-text token has the highest id (what CLIP's text pooling looks for). Tokenizers are trained
offline with 🤗 tokenizers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
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


def build_chat_tokenizer(
    corpus: Iterable[str],
    max_length: int = 512,
    chat_template: str | None = CHAT_TEMPLATE,
    phrases: Sequence[str] = (),
):
    """Word-level PreTrainedTokenizerFast over ``corpus`` with role tokens and (optionally) a chat template.
    ``phrases`` become single tokens matched verbatim and decoded verbatim, e.g. the pieces of a JSON reply
    (``{"question": "``), which word-level decoding would otherwise space apart."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
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
    if phrases:
        tokenizer.add_tokens([AddedToken(p, normalized=False) for p in phrases])
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
    phrases: Sequence[str] = (),
    seed: int = 0,
) -> Path:
    """Save a random-initialised Llama (``kind="llama"``) or Qwen2 (``"qwen2"``) causal LM with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = build_chat_tokenizer(corpus, max_length, chat_template, phrases)
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


CLIP_SPECIAL = ["[PAD]", "[UNK]", "[BOS]"]
EOS = "[EOS]"


def build_word_tokenizer(corpus: Iterable[str], max_length: int):
    """A word-level PreTrainedTokenizerFast over ``corpus``: [PAD]=0, [UNK]=1, [BOS]=2, words, [EOS]=last."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*CLIP_SPECIAL, *corpus_words(corpus), EOS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"[BOS] $A {EOS}", special_tokens=[("[BOS]", vocab["[BOS]"]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token=EOS,
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
    )


def save_tiny_clip(
    path: str | Path,
    corpus: Iterable[str],
    *,
    kind: str = "clip",
    image_size: int = 32,
    hidden: int = 32,
    layers: int = 2,
    projection_dim: int = 16,
    max_text_length: int = 32,
    seed: int = 0,
) -> Path:
    """Save a random-initialised CLIP (``kind="clip"``) or SigLIP (``"siglip"``) with tokenizer and image processor."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    path = Path(path)
    tokenizer = build_word_tokenizer(corpus, max_text_length)
    vocab = len(tokenizer)
    tower = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2)
    text = dict(
        tower,
        vocab_size=vocab,
        max_position_embeddings=max_text_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(tower, image_size=image_size, patch_size=image_size // 4)
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))
        processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    elif kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=dict(text, projection_size=hidden), vision_config=vision))
        processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"kind must be clip or siglip, got {kind!r}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    return path
