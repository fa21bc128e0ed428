"""Stock 🤗 multimodal LLMs as embedders (issue 21, part 1): tiny random LLaVA models built from configs, saved
with their processors and loaded back through the public loaders; vectors against UniME's Quick Start
computation (``processor(text=prompt, images=[img])``, ``hidden_states[-1][:, -1, :]``, L2-normalised)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from modgap.errors import ModgapError

WORDS = ["a", "red", "blue", "circle", "square", "photo", "of", "summary", "above", "image", "sentence", "in",
         "one", "word", "[INST]", "[/INST]"]  # fmt: skip
LITERAL = {  # UniME's LLaVA-1.6 recipe, verbatim
    "text": "[INST] <sent>\nSummary above sentence in one word: [/INST]",
    "image": "[INST] <image>\nSummary above image in one word: [/INST]",
    "image_text": "[INST] <image>\n<sent>\nSummary above image in one word: [/INST]",
}


def build_llava(path: Path, padding_side: str = "right") -> Path:
    """LlavaForConditionalGeneration over a CLIP vision tower and a Llama, with a LlavaProcessor (PIL CLIP
    image processor, a word-level tokenizer with <image> added)."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from modgap.world.tiny import build_chat_tokenizer

    tok = build_chat_tokenizer(WORDS)
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.padding_side = padding_side
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default")  # fmt: skip
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               num_additional_image_tokens=1, vision_feature_select_strategy="default",
                               chat_template=tok.chat_template)  # fmt: skip
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    rows = []
    for i in range(5):  # different sizes: the processor resizes and crops each
        pixels = (rng.random((30 + 7 * i, 40 - 3 * i, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
        rows.append({"id": f"r{i}", "image": f"images/im{i}.png", "text": " ".join(["a red circle"] + ["photo"] * i)})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "model": build_llava(root / "llava"), "rows": rows}


def quick_start(model_dir: Path, prompt: str, image: Image.Image | None = None) -> np.ndarray:
    """The UniME Quick Start, one input at a time, on the stock classes alone."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    inputs = processor(text=prompt, images=[image] if image is not None else None, return_tensors="pt")
    with torch.no_grad():
        last = model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1][:, -1, :]
    return torch.nn.functional.normalize(last, dim=-1)[0].numpy()


def test_embed_equals_the_quick_start_for_texts_and_images_whatever_the_padding_side(llava, tmp_path):
    from transformers import AutoProcessor

    from modgap.embedder.stock import default_templates
    from modgap.store import EmbeddingStore

    root = llava["root"]
    left = build_llava(tmp_path / "llava-left", padding_side="left")  # same weights (seeded), left padding
    for model, name in ((llava["model"], "right"), (left, "left")):
        run_cli("embed", "--encoder", f"embedder:{model}", "--modality", "both", "--data", root / "data.jsonl",
                "--image-root", root, "--out-image", tmp_path / f"img-{name}", "--out-text", tmp_path / f"txt-{name}",
                "--batch-size", "3", "--num-workers", "1")  # fmt: skip
    templates = default_templates(AutoProcessor.from_pretrained(llava["model"]))
    assert templates["image"].count("<image>") == 1 and "<sent>" in templates["text"]
    images = EmbeddingStore.open(tmp_path / "img-right")
    texts = EmbeddingStore.open(tmp_path / "txt-right")
    assert images.manifest.encoder["templates"] == templates
    for row in llava["rows"]:
        with Image.open(root / row["image"]) as im:
            expected = quick_start(llava["model"], templates["image"], im.convert("RGB"))
        np.testing.assert_allclose(images.get([row["id"]])[0].astype(np.float32), expected, atol=2e-3)
        expected = quick_start(llava["model"], templates["text"].replace("<sent>", row["text"]))
        np.testing.assert_allclose(texts.get([row["id"]])[0].astype(np.float32), expected, atol=2e-3)
    for kind in ("img", "txt"):  # batches mixed lengths; the saved padding side changes nothing
        a = EmbeddingStore.open(tmp_path / f"{kind}-right").to_numpy()
        b = EmbeddingStore.open(tmp_path / f"{kind}-left").to_numpy()
        np.testing.assert_array_equal(a, b)


def test_literal_templates_are_used_verbatim_and_mixed_inputs_take_their_own(llava, tmp_path):
    from modgap.encoders import load_encoder

    (tmp_path / "t.json").write_text(json.dumps(LITERAL))
    encoder = load_encoder(f"embedder:{llava['model']}", templates=tmp_path / "t.json")
    assert encoder.templates == LITERAL
    root = llava["root"]
    with Image.open(root / "images" / "im1.png") as im:
        image = im.convert("RGB")
    got = encoder.embed_items(["a red square", None, "a photo"], [None, image, image]).numpy()
    want = [
        quick_start(llava["model"], LITERAL["text"].replace("<sent>", "a red square")),
        quick_start(llava["model"], LITERAL["image"], image),
        quick_start(llava["model"], LITERAL["image_text"].replace("<sent>", "a photo"), image),
    ]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
    # Kept beside the model, the templates need no flag.
    copy = tmp_path / "with-templates"
    shutil.copytree(llava["model"], copy)
    (copy / "modgap_embedder.json").write_text(json.dumps({"templates": LITERAL}))
    assert load_encoder(f"embedder:{copy}").templates == LITERAL


def test_bad_templates_and_directories_are_refused_before_any_data_is_read(llava, tmp_path):
    from modgap.encoders import load_encoder

    broken = {**LITERAL, "text": "[INST] Summary above sentence in one word: [/INST]"}
    (tmp_path / "t.json").write_text(json.dumps(broken))
    with pytest.raises(ModgapError, match=r"template 'text' has no <sent> slot"):
        load_encoder(f"embedder:{llava['model']}", templates=tmp_path / "t.json")
    (tmp_path / "t.json").write_text(json.dumps({**LITERAL, "image": "[INST] Summary above image [/INST]"}))
    with pytest.raises(ModgapError, match=r"template 'image' must hold the image token '<image>' once"):
        load_encoder(f"embedder:{llava['model']}", templates=tmp_path / "t.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModgapError, match="neither a modgap embedder or model directory nor a stock multimodal LLM"):
        load_encoder(f"embedder:{tmp_path / 'empty'}")
    with pytest.raises(ModgapError, match="--templates applies to embedder:DIR"):
        load_encoder("builtin:tiny-clip", templates=tmp_path / "t.json")
    proc = run_cli("embed", "--encoder", f"embedder:{llava['model']}", "--templates", tmp_path / "t.json",
                   "--modality", "text", "--data", llava["root"] / "data.jsonl", "--out-text", tmp_path / "s",
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and "must hold the image token" in proc.stderr and not (tmp_path / "s").exists()


def test_mmeb_on_a_stock_model_matches_the_quick_start_scores(llava, tmp_path):
    """`eval mmeb --model STOCK_DIR --templates`: per-row choices equal the argmax of Quick Start vectors (the
    query's <|image_1|> marker goes, the template places the image)."""
    from modgap.embedder.encoder import load as load_embedder
    from modgap.eval.mmeb import evaluate_mmeb

    root = llava["root"]
    (tmp_path / "t.json").write_text(json.dumps(LITERAL))
    texts = [r["text"] for r in llava["rows"]]
    rows = [{"qry_text": "<|image_1|> a photo", "qry_img_path": f"images/im{i}.png",
             "tgt_text": [texts[i], *(texts[j] for j in range(5) if j != i)], "tgt_img_path": [""] * 5}
            for i in range(5)]  # fmt: skip
    (tmp_path / "mmeb").mkdir()
    (tmp_path / "mmeb" / "ImageNet-1K.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    encoder = load_embedder(str(llava["model"]), batch_size=2, templates=tmp_path / "t.json")
    result = evaluate_mmeb(encoder, tmp_path / "mmeb", root, batch_size=2)
    want = []
    for row in rows:
        with Image.open(root / row["qry_img_path"]) as im:
            query = quick_start(llava["model"], LITERAL["image_text"].replace("<sent>", "a photo"), im.convert("RGB"))
        cands = [quick_start(llava["model"], LITERAL["text"].replace("<sent>", t)) for t in row["tgt_text"]]
        want.append(int(np.argmax([query @ c for c in cands])))
    assert result.predictions["ImageNet-1K"] == want
    p1 = np.mean([w == 0 for w in want])
    assert result.tasks["ImageNet-1K"] == p1 and result.groups == {"classification": p1, "IND": p1}


def test_mmeb_group_means_follow_the_meta_tasks_and_in_or_out_of_distribution():
    from modgap.eval.mmeb import META_TASKS, OUT_OF_DISTRIBUTION, group_means

    assert sum(len(v) for v in META_TASKS.values()) == 36 and len(OUT_OF_DISTRIBUTION) == 16
    tasks = {"ImageNet-1K": 0.5, "Place365": 0.1, "VisDial": 0.9, "RefCOCO": 0.3, "MyTask": 1.0}
    assert group_means(tasks) == pytest.approx(
        {"classification": 0.3, "retrieval": 0.9, "grounding": 0.3, "IND": 0.7, "OOD": 0.2}
    )


def build_idefics3(path: Path) -> Path:
    """Idefics3 (SmolVLM's architecture): a SigLIP-style tower, pixel shuffle, a Llama, image splitting."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    from modgap.world.tiny import build_chat_tokenizer

    tok = build_chat_tokenizer(WORDS)
    grid = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]
    tok.add_tokens(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *grid],
                   special_tokens=True)  # fmt: skip
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                            scale_factor=2)  # fmt: skip
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(path)
    images = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                      chat_template=tok.chat_template).save_pretrained(path)  # fmt: skip
    return path


def test_idefics3_images_of_different_sizes_in_one_batch_match_the_quick_start(llava, tmp_path):
    """Image splitting gives each image its own number of tiles; a batch of them still gives each image the
    vector it gets alone."""
    from modgap.encoders import load_encoder

    model = build_idefics3(tmp_path / "idefics3")
    encoder = load_encoder(f"embedder:{model}")
    pictures = []
    for row in llava["rows"]:
        with Image.open(llava["root"] / row["image"]) as im:
            pictures.append(im.convert("RGB").resize((im.width * 2, im.height)))
    texts = [r["text"] for r in llava["rows"]]
    got_images, got_texts = encoder.encode_images(pictures).numpy(), encoder.encode_texts(texts).numpy()
    for i, (picture, text) in enumerate(zip(pictures, texts, strict=True)):
        np.testing.assert_allclose(got_images[i], quick_start(model, encoder.templates["image"], picture), atol=1e-5)
        expected = quick_start(model, encoder.templates["text"].replace("<sent>", text))
        np.testing.assert_allclose(got_texts[i], expected, atol=1e-5)
