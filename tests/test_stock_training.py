"""UniME's two stages from a stock 🤗 multimodal LLM (issue 21, part 2): a tiny random LLaVA built from configs,
trained 2-4 steps through `modgap embedder distill|tune --init STOCK_DIR`; the output is a stock checkpoint
that `AutoModelForImageTextToText` loads, whose Quick Start vectors equal what `modgap embed` stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import make_store, patch_world, run_cli
from modgap.errors import ModgapError
from test_stock_mllm import LITERAL, build_llava, quick_start

TEXTS = ["a red circle", "a blue square", "a photo of a red square", "a blue circle", "a red photo", "one word",
         "a blue photo of a circle", "a square in one photo"]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stock-train")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(8):
        pixels = (rng.random((28 + 3 * i, 36, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / "images" / f"im{i}.png")
    (root / "texts.jsonl").write_text(
        "".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    teacher = rng.normal(size=(len(TEXTS), 12)).astype(np.float32)
    make_store(root / "teacher", teacher, prefix="t", modality="text")
    # Odd rows: image + text query, text positive; even rows: text query, image positive.
    pairs = [{"qry": f"<|image_1|> {TEXTS[i]}" if i % 2 else TEXTS[i],
              "qry_image_path": f"images/im{i}.png" if i % 2 else "",
              "pos_text": TEXTS[(i + 1) % 8], "pos_image_path": "" if i % 2 else f"images/im{i}.png"}
             for i in range(8)]  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (root / "t.json").write_text(json.dumps(LITERAL))
    return {"root": root, "base": build_llava(root / "llava"), "pairs": pairs}


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return {k: v.clone() for k, v in AutoModelForImageTextToText.from_pretrained(model_dir).state_dict().items()}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], part: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if part in k)


def test_distill_then_tune_give_a_stock_checkpoint_whose_quick_start_equals_modgap_embed(world, tmp_path):
    root, base = world["root"], world["base"]
    run_cli("embedder", "distill", "--init", base, "--templates", root / "t.json", "--data", root / "texts.jsonl",
            "--teacher-embeddings", root / "teacher", "--batch-size", 4, "--max-steps", 2, "--lr", "1e-2",
            "--out", tmp_path / "distill")  # fmt: skip
    before, distilled = _weights(base), _weights(tmp_path / "distill" / "model")
    assert before.keys() == distilled.keys()  # LoRA merged: the stock architecture's own parameters, no adapter
    assert _changed(before, distilled, "language_model")  # stage 1 tunes only the language model
    assert not _changed(before, distilled, "vision_tower") and not _changed(before, distilled, "multi_modal_projector")
    record = json.loads((tmp_path / "distill" / "model" / "modgap_embedder.json").read_text())
    assert record["templates"] == LITERAL and record["pooling"] == "last"

    run_cli("embedder", "tune", "--init", tmp_path / "distill" / "model", "--data", root / "pairs.jsonl",
            "--image-root", root, "--batch-size", 4, "--max-steps", 2, "--lr", "1e-2", "--hard-negatives", 2,
            "--out", tmp_path / "tune")  # fmt: skip
    model_dir = tmp_path / "tune" / "model"
    tuned = _weights(model_dir)
    assert _changed(distilled, tuned, "language_model") and _changed(distilled, tuned, "multi_modal_projector")
    assert not _changed(distilled, tuned, "vision_tower")  # the vision tower stays frozen
    card = (model_dir / "README.md").read_text()
    assert str(base) in card and "stage: `tune`" in card and "<sent>" in card
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "processor_config.json").is_file()

    _three_loaders_agree(tmp_path / "tune", root, LITERAL, tmp_path)


def _three_loaders_agree(run, root, templates, tmp_path) -> None:
    """The Quick Start on the saved checkpoint gives the vectors `modgap embed --encoder embedder:RUN` stores,
    and sentence-transformers loads it with the same prompts and pooling (image + text: the Quick Start's)."""
    from sentence_transformers import SentenceTransformer

    from modgap.store import EmbeddingStore

    model_dir, data = run / "model", tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "image": f"images/im{i}.png", "text": TEXTS[i]}) + "\n"
                            for i in range(3)))  # fmt: skip
    run_cli("embed", "--encoder", f"embedder:{run}", "--modality", "both", "--data", data,
            "--image-root", root, "--out-image", tmp_path / "img", "--out-text", tmp_path / "txt")  # fmt: skip
    images, texts = EmbeddingStore.open(tmp_path / "img"), EmbeddingStore.open(tmp_path / "txt")
    pictures = []
    for i in range(3):
        with Image.open(root / "images" / f"im{i}.png") as im:
            pictures.append(im.convert("RGB"))
        want = quick_start(model_dir, templates["image"], pictures[i])
        np.testing.assert_allclose(images.get([f"r{i}"])[0].astype(np.float32), want, atol=2e-3)
        want = quick_start(model_dir, templates["text"].replace("<sent>", TEXTS[i]))
        np.testing.assert_allclose(texts.get([f"r{i}"])[0].astype(np.float32), want, atol=2e-3)

    model = SentenceTransformer(str(model_dir), device="cpu")
    ids = [f"r{i}" for i in range(3)]
    np.testing.assert_allclose(model.encode(TEXTS[:3]), texts.get(ids).astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(model.encode(pictures), images.get(ids).astype(np.float32), atol=2e-3)
    both = model.encode([{"text": TEXTS[i], "image": pictures[i]} for i in range(3)])
    for i in range(3):
        want = quick_start(model_dir, templates["image_text"].replace("<sent>", TEXTS[i]), pictures[i])
        np.testing.assert_allclose(both[i], want, atol=1e-5)


def _tune_config(world, out, **kw):
    from modgap.embedder.config import EmbedderTrainConfig

    root = world["root"]
    return EmbedderTrainConfig(stage="tune", init=str(world["base"]), templates=str(root / "t.json"),
                               data=str(root / "pairs.jsonl"), image_root=str(root), out=str(out), batch_size=4,
                               max_steps=4, lr=1e-2, hard_negatives=2, **kw)  # fmt: skip


def test_resume_equals_an_uninterrupted_run(world, tmp_path):
    from modgap.embedder.train import train

    straight = train(_tune_config(world, tmp_path / "a"))
    first = train(_tune_config(world, tmp_path / "b", stop_after=2))
    assert first.stopped_early and not (tmp_path / "b" / "model").exists()
    resumed = train(_tune_config(world, tmp_path / "b", resume=True))
    assert resumed.steps == 4 and resumed.losses == pytest.approx(straight.losses[2:], rel=1e-5)
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def _stock_grads(world, tmp_path, chunk):
    from accelerate import Accelerator

    from modgap.embedder.stock_train import StockPairSet
    from modgap.embedder.train import Objective, _make_stock, contrastive_step
    from modgap.store.checks import BadRows

    cfg = _tune_config(world, tmp_path / "g")
    torch.manual_seed(0)
    model = _make_stock(cfg)
    data = StockPairSet(cfg.data, cfg.image_root, BadRows())
    model.train()
    torch.manual_seed(1)
    contrastive_step(model, model, Accelerator(cpu=True), data.batch(list(range(8))), Objective(cfg, 1), chunk)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_caching_replays_the_images_and_gives_the_plain_gradient(world, tmp_path):
    plain, cached = _stock_grads(world, tmp_path, None), _stock_grads(world, tmp_path, 3)
    assert plain.keys() == cached.keys() and any("multi_modal_projector" in k for k in plain)
    assert any(float(g.abs().max()) > 0 for k, g in plain.items() if "multi_modal_projector" in k)
    for name in plain:
        scale = float(plain[name].abs().max())
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-4 * scale + 1e-9, msg=name)


def test_two_processes_equal_one_process_with_the_global_batch(world, tmp_path):
    from test_distributed import torchrun

    root = world["root"]
    common = ["embedder", "tune", "--init", world["base"], "--templates", root / "t.json", "--data",
              root / "pairs.jsonl", "--image-root", root, "--max-steps", "2", "--lr", "1e-2",
              "--hard-negatives", "2"]  # fmt: skip
    # Two processes of 2 with gradient caching (the images replayed through the vision tower) against one of 4.
    proc = torchrun(*common, "--out", tmp_path / "ddp", "--batch-size", "2", "--grad-cache-chunk", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_cli(*common, "--out", tmp_path / "one", "--batch-size", "4")
    a = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_unreadable_images_name_the_row_or_are_listed_and_skipped(world, tmp_path):
    from modgap.embedder.train import train

    root = world["root"]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    rows = [*world["pairs"][:4], {"qry": "a red circle", "pos_image_path": "images/missing.png"},
            {"qry": "a red circle", "pos_image_path": str(tmp_path / "broken.png")}]  # fmt: skip
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dict(data=str(pairs), out=str(tmp_path / "r"), max_steps=1)
    with pytest.raises(ModgapError, match=r"pairs.jsonl: row 5: image 'images/missing.png' cannot be read"):
        train(_with(world, dict(cfg)))
    result = train(_with(world, {**cfg, "on_bad": "skip"}))
    listed = [json.loads(line) for line in (tmp_path / "r" / "bad_rows.jsonl").read_text().splitlines()]
    assert result.steps == 1 and [r["where"].rsplit(": ", 1)[-1] for r in listed] == ["row 5", "row 6"]
    assert (root / "images").is_dir()


def _with(world, overrides):
    from modgap.embedder.config import EmbedderTrainConfig

    cfg = _tune_config(world, overrides.pop("out"))
    return EmbedderTrainConfig(**{**cfg.__dict__, **overrides})


def test_stock_base_errors_are_clear_before_training(world, tmp_path):
    proc = run_cli("embedder", "tune", "--init", world["base"], "--data", world["root"] / "pairs.jsonl",
                   "--embeddings", world["root"] / "teacher", "--out", tmp_path / "x", check=False)  # fmt: skip
    assert proc.returncode == 2 and "reads image files (--image-root), not stores" in proc.stderr
    proc = run_cli("embedder", "distill", "--llm", "builtin:tiny-lm", "--embed-dim", 8, "--templates",
                   world["root"] / "t.json", "--data", world["root"] / "texts.jsonl", "--teacher-embeddings",
                   world["root"] / "teacher", "--out", tmp_path / "y", check=False)  # fmt: skip
    assert proc.returncode == 2 and "apply to a stock multimodal LLM base" in proc.stderr
    assert not (tmp_path / "x" / "model").exists() and not (tmp_path / "y" / "model").exists()


def test_the_built_in_stock_llava_is_tiny_clip_and_tiny_lm_in_stock_form(tmp_path):
    """The assembled LlavaForConditionalGeneration, loaded back through the Auto classes: its language model
    gives tiny-lm's logits on text and its vision tower tiny-clip's vision features (plain transformers
    forwards of the two built-in models)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPVisionModel,
    )

    from modgap.hub import resolve
    from modgap.world.scene import make_scenes, render
    from modgap.world.stock import assemble_llava

    llava_dir = assemble_llava(tmp_path / "llava")
    llava = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()
    processor = AutoProcessor.from_pretrained(llava_dir)
    lm = AutoModelForCausalLM.from_pretrained(resolve("builtin:tiny-lm")).eval()
    ids = AutoTokenizer.from_pretrained(resolve("builtin:tiny-lm"))(
        "a red circle left of a blue square", return_tensors="pt"
    )
    image = render(make_scenes(1, 0, "stock")[0])
    pixels = CLIPImageProcessorPil.from_pretrained(resolve("builtin:tiny-clip"))(images=[image], return_tensors="pt")
    vision = CLIPVisionModel.from_pretrained(resolve("builtin:tiny-clip")).eval()
    with torch.no_grad():
        torch.testing.assert_close(llava(**ids).logits[..., : lm.config.vocab_size], lm(**ids).logits)
        got = llava.model.vision_tower(processor(text=["<image>"], images=[image], return_tensors="pt")["pixel_values"])
        torch.testing.assert_close(got.last_hidden_state, vision(**pixels).last_hidden_state)


def test_an_idefics3_base_trains_both_stages_and_its_checkpoint_gives_modgap_embed_vectors(world, tmp_path):
    """SmolVLM's architecture: image splitting, pixel shuffle and its `connector` (the projector tuned in stage
    2); the chat-template defaults (no --templates) are recorded and reused by `embedder:RUN`."""
    from test_stock_mllm import build_idefics3

    root, base = world["root"], build_idefics3(tmp_path / "idefics3")
    run_cli("embedder", "distill", "--init", base, "--data", root / "texts.jsonl", "--teacher-embeddings",
            root / "teacher", "--batch-size", 4, "--max-steps", 2, "--lr", "1e-2", "--out", tmp_path / "d")  # fmt: skip
    run_cli("embedder", "tune", "--init", tmp_path / "d" / "model", "--data", root / "pairs.jsonl", "--image-root",
            root, "--batch-size", 4, "--max-steps", 2, "--lr", "1e-2", "--out", tmp_path / "t")  # fmt: skip
    before, distilled, tuned = _weights(base), _weights(tmp_path / "d" / "model"), _weights(tmp_path / "t" / "model")
    assert _changed(before, distilled, "text_model") and not _changed(before, distilled, "connector")
    assert _changed(distilled, tuned, "text_model") and _changed(distilled, tuned, "connector")
    assert not _changed(before, tuned, "vision_model")
    templates = json.loads((tmp_path / "t" / "model" / "modgap_embedder.json").read_text())["templates"]
    assert "<image>" in templates["image"] and "<sent>" in templates["text"]

    _three_loaders_agree(tmp_path / "t", root, templates, tmp_path)


def test_the_built_in_llava_with_a_pretrained_projector_sees_an_image_as_the_modgap_model_does(tmp_path):
    """`world assemble-llava --projector MODEL`: the projector of a modgap model pretrained over tiny-clip's
    patch tokens (LLaVA's stage 1) moves into the stock LLaVA; its image features are that model's visual
    tokens for the stored patches of the same image. A model the projector cannot come from is refused."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modgap.mllm.model import VisionLanguageModel
    from modgap.store import EmbeddingStore
    from modgap.world.scene import render

    scenes, _ = patch_world(tmp_path, 8, "stock-projector")
    run_cli("train", "pretrain", "--llm", "builtin:tiny-lm", "--data", tmp_path / "data.jsonl", "--embeddings",
            tmp_path / "patches", "--max-steps", 2, "--batch-size", 4, "--out", tmp_path / "run")  # fmt: skip
    run_cli("world", "assemble-llava", "--out", tmp_path / "llava", "--projector", tmp_path / "run" / "model")
    record = json.loads((tmp_path / "llava" / "modgap_world.json").read_text())
    assert record["command"].startswith("modgap world assemble-llava") and "--projector" in record["command"]

    vlm = VisionLanguageModel.load(tmp_path / "run" / "model")
    llava = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    patches = torch.from_numpy(EmbeddingStore.open(tmp_path / "patches").get(["p0", "p1"]).astype(np.float32))
    pixels = processor(text=["<image>"] * 2, images=[render(s) for s in scenes[:2]], return_tensors="pt")
    with torch.no_grad():
        want = vlm.projector(patches)
        # transformers 5: an output object whose pooler_output lists each image's projected patch tokens
        got = torch.stack(llava.model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    run_cli("train", "pretrain", "--llm", "builtin:tiny-lm", "--data", tmp_path / "data.jsonl", "--embeddings",
            tmp_path / "patches", "--max-steps", 1, "--batch-size", 4, "--tune", "full",
            "--out", tmp_path / "f")  # fmt: skip
    proc = run_cli("world", "assemble-llava", "--out", tmp_path / "x", "--projector", tmp_path / "f" / "model",
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and "not builtin:tiny-lm as saved" in proc.stderr and not (tmp_path / "x").exists()
