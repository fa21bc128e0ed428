"""Small dual encoders built from configs and saved in 🤗 format, loadable like any local checkpoint.

Used by the tests and as the starting point of the built-in world's encoder. The tokenizer is a
word-level one trained offline with 🤗 tokenizers; the end-of-text token has the highest id, which is
what CLIP's text pooling looks for.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from modgap.mllm.tiny import corpus_words

SPECIAL = ["[PAD]", "[UNK]", "[BOS]"]
EOS = "[EOS]"


def build_word_tokenizer(corpus: Iterable[str], max_length: int):
    """A word-level PreTrainedTokenizerFast over ``corpus``: [PAD]=0, [UNK]=1, [BOS]=2, words, [EOS]=last."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *corpus_words(corpus), EOS])}
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
