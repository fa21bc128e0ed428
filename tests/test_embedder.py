"""The embedder: last-token pooling, the two training stages, gradient caching, DDP, resume, the encoder spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_store, patch_world, run_cli
from modgap.embedder.config import EmbedderConfig, EmbedderTrainConfig
from modgap.embedder.data import PairSet, TextSet
from modgap.embedder.model import Embedder, Item
from modgap.embedder.train import Objective, _make_embedder, contrastive_step, train
from modgap.errors import ModgapError
from modgap.mllm.model import VisionLanguageModel

D = 16  # width of the toy image embeddings
WORDS = ["red", "blue", "green", "yellow", "circle", "square", "triangle", "star", "big", "small", "top", "left"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Texts with a (random) teacher store, images in a store keyed by path, and MMEB-layout pairs."""
    root = tmp_path_factory.mktemp("embedder")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(2, 7)))) for _ in range(48)]
    with open(root / "texts.jsonl", "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"t{i}", "text": t}) + "\n")
    make_store(root / "teacher", rng.normal(size=(48, 12)).astype(np.float32), prefix="t")
    images = rng.normal(size=(48, D)).astype(np.float32)
    from modgap.store import StoreWriter

    with StoreWriter(root / "images", dim=D, modality="image") as w:
        w.write([f"img/{i}.png" for i in range(48)], images)
    with open(root / "pairs.jsonl", "w") as f:
        for i, t in enumerate(texts):
            row = {"qry": "<|image_1|> Find a caption for this image.", "qry_image_path": f"img/{i}.png"}
            row |= {"pos_text": t, "pos_image_path": "", "neg_text": texts[(i + 1) % 48], "neg_image_path": ""}
            f.write(json.dumps(row) + "\n")
    return {"root": root, "texts": root / "texts.jsonl", "teacher": root / "teacher", "images": root / "images",
            "pairs": root / "pairs.jsonl"}  # fmt: skip


def fresh_embedder() -> Embedder:
    return Embedder(VisionLanguageModel.build("builtin:tiny-lm", D, num_visual_tokens=4, seed=0), EmbedderConfig())


# -- the model ----------------------------------------------------------------------------------
def test_embedding_does_not_depend_on_padding_side_or_batch():
    emb = fresh_embedder()
    items = [Item(text="red circle"), Item(text="a big blue square at the top left of the picture"),
             Item(image=True), Item(text="<image> what colour is it?", image=True)]  # fmt: skip
    visual = torch.randn(2, D)
    together = emb.embed(items, visual, batch_size=8)
    alone = torch.cat([emb.embed([items[0]]), emb.embed([items[1]]), emb.embed([items[2]], visual[:1]),
                       emb.embed([items[3]], visual[1:])])  # fmt: skip
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    # Right padding: the pooled position follows the mask, positions are recounted from it.
    prompts = [emb.prompt_ids(it) for it in items[:2]]
    width = max(map(len, prompts))
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = torch.tensor(p), 1
    with torch.no_grad():
        right = emb(ids, mask)
    torch.testing.assert_close(right, together[:2], rtol=1e-4, atol=1e-5)
    assert torch.allclose(together.norm(dim=1), torch.ones(4))


def test_prompts_follow_the_templates():
    from modgap.mllm.chat import encode

    emb = fresh_embedder()

    def rendered(content: str) -> list[int]:
        return encode(emb.tokenizer, [{"role": "user", "content": content}], 4, add_generation_prompt=True).input_ids

    assert emb.prompt_ids(Item(text="red circle")) == rendered("red circle\nSummarize above sentence in one word:")
    assert emb.prompt_ids(Item(image=True)) == rendered("<image>\nSummarize above image in one word:")
    # A text with its own <image> marker (MMEB's <|image_1|>) keeps it there; the template's is dropped.
    ids = emb.prompt_ids(Item(text="<image> Find a caption.", image=True))
    assert ids == rendered("<image> Find a caption.\nSummarize above image and instruction in one word:")
    assert ids.count(-200) == 4
    with pytest.raises(ModgapError, match="no <sent> slot"):
        EmbedderConfig(templates={"text": "no slot", "image": "<image>", "image_text": "<image> <sent>"})


# -- gradient caching ---------------------------------------------------------------------------
def _grads(stage: str, data: dict[str, Path], tmp_path: Path, chunk: int | None) -> dict[str, torch.Tensor]:
    from accelerate import Accelerator

    torch.manual_seed(0)
    cfg = EmbedderTrainConfig(
        stage=stage, out=str(tmp_path / "unused"), data=str(data["texts" if stage == "distill" else "pairs"]),
        teacher_embeddings=str(data["teacher"]), embeddings=str(data["images"]), llm="builtin:tiny-lm",
        embed_dim=D, num_visual_tokens=4, hard_negatives=3,
    )  # fmt: skip
    emb = _make_embedder(cfg)
    ds = (
        TextSet(cfg.data, cfg.teacher_embeddings, emb) if stage == "distill" else PairSet(cfg.data, cfg.embeddings, emb)
    )
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(emb)
    model.train()
    loss = contrastive_step(model, emb, accelerator, ds.batch(list(range(12))), Objective(cfg, 1), chunk)
    assert torch.isfinite(loss)
    return {n: p.grad.clone() for n, p in emb.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("stage", ["distill", "tune"])
def test_gradient_cache_gives_the_plain_batch_gradient(data, tmp_path, stage):
    plain = _grads(stage, data, tmp_path, None)
    cached = _grads(stage, data, tmp_path, 5)  # chunks cut through queries / positives / negatives
    assert plain and plain.keys() == cached.keys()
    assert any(float(g.abs().max()) > 0 for g in plain.values())
    for name in plain:  # float32 sums in another order: differences far below each tensor's own scale
        scale = float(plain[name].abs().max())
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-4 * scale, msg=name)


# -- the recipe: resume, DDP --------------------------------------------------------------------
def _trained(directory: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(directory / "model" / "adapter" / "adapter_model.safetensors"))
    projector = directory / "model" / "projector.safetensors"
    out |= {f"projector.{k}": v for k, v in load_file(str(projector)).items()}
    return out


def test_resume_takes_the_same_steps_as_an_uninterrupted_run(data, tmp_path):
    common = dict(stage="distill", data=str(data["texts"]), teacher_embeddings=str(data["teacher"]),
                  llm="builtin:tiny-lm", embed_dim=D, batch_size=8, max_steps=4, lr=1e-3,
                  num_visual_tokens=4)  # fmt: skip
    straight = train(EmbedderTrainConfig(out=str(tmp_path / "a"), **common))
    first = train(EmbedderTrainConfig(out=str(tmp_path / "b"), stop_after=2, **common))
    assert first.stopped_early and first.steps == 2 and not (tmp_path / "b" / "model").exists()
    resumed = train(EmbedderTrainConfig(out=str(tmp_path / "b"), resume=True, **common))
    assert resumed.steps == 4 and resumed.losses == pytest.approx(straight.losses[2:], rel=1e-5)
    a, b = _trained(tmp_path / "a"), _trained(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    with pytest.raises(ModgapError, match="lr"):  # a resume that would compute something else is refused
        train(EmbedderTrainConfig(out=str(tmp_path / "b"), resume=True, **{**common, "lr": 1e-2}))


def test_two_processes_equal_one_process_with_the_global_batch(data, tmp_path):
    from test_distributed import torchrun

    common = ["embedder", "tune", "--llm", "builtin:tiny-lm", "--embed-dim", str(D), "--visual-tokens", "4",
              "--data", data["pairs"], "--embeddings", data["images"], "--max-steps", "2", "--lr", "1e-3",
              "--hard-negatives", "4"]  # fmt: skip
    # Two processes of 6 with gradient caching against one process of 12 without.
    proc = torchrun(*common, "--out", tmp_path / "ddp", "--batch-size", "6", "--grad-cache-chunk", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_cli(*common, "--out", tmp_path / "one", "--batch-size", "12")
    a, b = _trained(tmp_path / "ddp"), _trained(tmp_path / "one")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


# -- data errors --------------------------------------------------------------------------------
def test_data_errors_name_the_row(data, tmp_path):
    emb = fresh_embedder()
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"qry": "<|image_1|>", "qry_image_path": "img/999.png", "pos_text": "x"}) + "\n")
    with pytest.raises(ModgapError, match=r"row 1: image 'img/999.png' is not in"):
        PairSet(bad, data["images"], emb)
    bad.write_text(
        json.dumps({"qry": "a", "pos_text": "b", "neg_text": "c"}) + "\n" + json.dumps({"qry": "a", "pos_text": "b"})
    )
    with pytest.raises(ModgapError, match="row 2 has no negative"):
        PairSet(bad, None, emb)
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "t0", "text": "red"}) + "\n" + json.dumps({"id": "zz", "text": "blue"}) + "\n")
    with pytest.raises(ModgapError, match="not in store: 'zz'"):
        TextSet(texts, data["teacher"], emb)
    with pytest.raises(ModgapError, match="--teacher-embeddings"):
        EmbedderTrainConfig(stage="distill", out="x", data="t.jsonl", init="m")


# -- the encoder spec ---------------------------------------------------------------------------
def test_cli_distill_tune_and_embed_with_the_trained_embedder(data, tmp_path):
    run_cli("embedder", "distill", "--llm", "builtin:tiny-lm", "--embed-dim", D, "--visual-tokens", 4,
            "--data", data["texts"], "--teacher-embeddings", data["teacher"], "--batch-size", 8, "--max-steps", 2,
            "--out", tmp_path / "distill")  # fmt: skip
    run_cli("embedder", "tune", "--init", tmp_path / "distill" / "model", "--data", data["pairs"],
            "--embeddings", data["images"], "--batch-size", 8, "--max-steps", 2,
            "--out", tmp_path / "tune")  # fmt: skip
    run_cli("embed", "--encoder", f"embedder:{tmp_path / 'tune'}", "--data", data["texts"], "--modality", "text",
            "--out-text", tmp_path / "store", "--dtype", "float32", "--num-workers", 0)  # fmt: skip
    from modgap.store import EmbeddingStore

    store = EmbeddingStore.open(tmp_path / "store")
    assert store.manifest.encoder["name"] == f"embedder:{tmp_path / 'tune'}"
    texts = [json.loads(line)["text"] for line in data["texts"].read_text().splitlines()]
    direct = Embedder.load(tmp_path / "tune").embed_texts(texts)
    np.testing.assert_allclose(store.get([f"t{i}" for i in range(48)]), direct.numpy(), rtol=1e-4, atol=1e-5)


# -- MMEB ---------------------------------------------------------------------------------------
def test_mmeb_precision_at_1_in_both_released_layouts(tmp_path):
    """Task files as MMEB releases them (Parquet and JSONL); P@1 against the embedder's own vectors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modgap.embedder.encoder import load as load_embedder
    from modgap.encoders import load_encoder
    from modgap.eval.mmeb import evaluate_mmeb
    from modgap.world.scene import caption, make_scenes, render

    clip = load_encoder("builtin:tiny-clip")
    vlm = VisionLanguageModel.build("builtin:tiny-lm", clip.dim, num_visual_tokens=4, encoder="builtin:tiny-clip")
    Embedder(vlm).save(tmp_path / "model")
    scenes = make_scenes(6, 0, "mmeb")
    (tmp_path / "images").mkdir()
    for i, scene in enumerate(scenes):
        render(scene).save(tmp_path / "images" / f"{i}.png")
    captions = [caption(s, variant=0) for s in scenes]
    # image -> text: query an image with an instruction, candidates are captions (target first).
    i2t = [{"qry_text": "<|image_1|> Find a caption.", "qry_img_path": f"{i}.png",
            "tgt_text": [captions[i], *(captions[j] for j in range(6) if j != i)], "tgt_img_path": [""] * 6}
           for i in range(6)]  # fmt: skip
    # text -> image, and one row whose target and a distractor are the same input: a tie, counted correct.
    t2i = [{"qry_text": captions[i], "qry_img_path": "", "tgt_text": ["<|image_1|>"] * 3,
            "tgt_img_path": [f"{i}.png", f"{(i + 1) % 6}.png", f"{(i + 2) % 6}.png"]} for i in range(5)]  # fmt: skip
    t2i.append({"qry_text": captions[5], "qry_img_path": "", "tgt_text": ["<|image_1|>"] * 2,
                "tgt_img_path": ["0.png", "0.png"]})  # fmt: skip
    data = tmp_path / "mmeb"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(i2t), data / "I2T.parquet")
    (data / "T2I.jsonl").write_text("".join(json.dumps(r) + "\n" for r in t2i))
    result = evaluate_mmeb(load_embedder(str(tmp_path / "model")), data, tmp_path / "images")
    assert result.rows == {"I2T": 6, "T2I": 6}

    emb = Embedder.load(tmp_path / "model")
    pics = [render(s) for s in scenes]
    visual = emb.vlm.visual_inputs(clip.encode_images(pics), "image")
    with_inst = emb.embed_images(visual, ["<image> Find a caption."] * 6)
    plain = emb.embed_images(visual)
    texts = emb.embed_texts(captions)
    want_i2t = [
        int(np.argmax([with_inst[i] @ texts[j] for j in [i, *(j for j in range(6) if j != i)]])) for i in range(6)
    ]
    want_t2i = [int(np.argmax([texts[i] @ plain[j] for j in (i, (i + 1) % 6, (i + 2) % 6)])) for i in range(5)] + [0]
    assert result.predictions == {"I2T": want_i2t, "T2I": want_t2i}
    assert result.tasks["I2T"] == pytest.approx(np.mean([p == 0 for p in want_i2t]))
    assert result.overall == pytest.approx((result.tasks["I2T"] + result.tasks["T2I"]) / 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "X.jsonl").write_text(json.dumps({"qry_text": "a", "tgt_text": ["a", "b"], "tgt_img_path": ["x.png"]}))
    with pytest.raises(ModgapError, match="row 1: tgt_text and tgt_img_path"):
        evaluate_mmeb(load_embedder(str(tmp_path / "model")), bad)


# -- patch features -----------------------------------------------------------------------------
def test_patch_features_flow_from_embed_to_train_and_the_embedder(tmp_path):
    """`embed --features patch` stores the tower's patch tokens (checked against a direct transformers
    forward); `train` and `embedder tune` build a patch projector from such a store; `embedder:DIR` reads
    images through the same patches."""
    from transformers import CLIPImageProcessor, CLIPModel

    from modgap.hub import resolve
    from modgap.store import EmbeddingStore
    from modgap.world.scene import render

    scenes, rows = patch_world(tmp_path, 16, "patch")
    store = EmbeddingStore.open(tmp_path / "patches")
    assert store.manifest.encoder["features"] == "patch" and not store.normalized
    tokens, width = store.manifest.encoder["tokens"], store.manifest.encoder["token_dim"]
    assert store.dim == tokens * width

    clip = CLIPModel.from_pretrained(resolve("builtin:tiny-clip")).eval()
    pixels = CLIPImageProcessor.from_pretrained(resolve("builtin:tiny-clip"))(
        [render(s) for s in scenes], return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        direct = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert direct.shape[1:] == (tokens, width)
    np.testing.assert_allclose(store.get([f"p{i}" for i in range(16)]), direct.flatten(1).numpy(), atol=1e-4)

    refused = run_cli("embed", "--encoder", "builtin:tiny-clip", "--data", tmp_path / "data.jsonl",
                      "--modality", "text", "--features", "patch", "--out-text", tmp_path / "t",
                      check=False)  # fmt: skip
    assert refused.returncode == 2 and "--features patch is for images" in refused.stderr

    # ReVision training on patch tokens: the model gets a patch projector with one token per patch.
    run_cli("train", "pretrain", "--llm", "builtin:tiny-lm", "--data", tmp_path / "data.jsonl",
            "--embeddings", tmp_path / "patches", "--max-steps", 2, "--batch-size", 4, "--report-to", "none",
            "--out", tmp_path / "pre")  # fmt: skip
    model = VisionLanguageModel.load(tmp_path / "pre" / "model")
    assert (model.config.token_mode, model.config.num_visual_tokens) == ("patch", tokens)
    # The embedder from a bare LM: width and patch shape come from the store.
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"qry": "<|image_1|>", "qry_image_path": r["id"], "pos_text": r["caption"]}) + "\n" for r in rows
    ))  # fmt: skip
    run_cli("embedder", "tune", "--llm", "builtin:tiny-lm", "--data", tmp_path / "pairs.jsonl",
            "--embeddings", tmp_path / "patches", "--batch-size", 8, "--max-steps", 2,
            "--out", tmp_path / "emb")  # fmt: skip
    from modgap.encoders import load_encoder

    encoder = load_encoder(f"embedder:{tmp_path / 'emb'}")
    emb = Embedder.load(tmp_path / "emb")
    assert emb.vlm.config.token_mode == "patch" and emb.vlm.config.encoder == "builtin:tiny-clip"
    via_encoder = encoder.encode_images([render(s) for s in scenes[:4]])
    direct_emb = emb.embed_images(direct[:4].flatten(1))
    torch.testing.assert_close(via_encoder, direct_emb, rtol=1e-3, atol=1e-4)


def test_lora_over_a_fully_tuned_lm_saves_the_merged_weights(tmp_path):
    """An adapter saved alone would load over the original base LM and lose the earlier full tuning."""
    from modgap.training import train_lora

    vlm = VisionLanguageModel.build("builtin:tiny-lm", D, num_visual_tokens=4, seed=0)
    with torch.no_grad():
        for p in vlm.llm.parameters():
            p.add_(0.01 * torch.randn_like(p))  # stands for a full fine-tune
    vlm.llm.requires_grad_(True)
    vlm.save(tmp_path / "full")
    emb = Embedder.load(tmp_path / "full")
    emb.vlm.llm = train_lora(emb.vlm.llm, 4, 8, 0.0)
    with torch.no_grad():
        for name, p in emb.vlm.llm.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))  # stands for LoRA training
    before = emb.embed_texts(["a red circle", "a big blue star at the top"])
    emb.save(tmp_path / "lora")
    again = Embedder.load(tmp_path / "lora")
    assert again.vlm.config.llm_weights == "llm" and not (tmp_path / "lora" / "adapter").exists()
    torch.testing.assert_close(again.embed_texts(["a red circle", "a big blue star at the top"]), before)


def test_mined_negatives_equal_a_brute_force_choice_and_feed_tune(tmp_path, rng):
    from modgap.embedder.mine import mine_negatives
    from modgap.store import StoreWriter

    n_img, n_txt, dim = 20, 60, D
    images = rng.normal(size=(n_img, dim)).astype(np.float32)
    pool = rng.normal(size=(n_txt, dim)).astype(np.float32)
    pool[:n_img] = images + 0.3 * rng.normal(size=(n_img, dim)).astype(np.float32)  # each image's caption
    pool[n_img : 2 * n_img] = images + 0.1 * rng.normal(size=(n_img, dim)).astype(np.float32)  # near-duplicates
    texts = [f"text {k}" for k in range(n_txt)]
    with StoreWriter(tmp_path / "img", dim=dim, modality="image") as w:
        w.write([f"img/{i}.png" for i in range(n_img)], images)
    make_store(tmp_path / "txt", pool, prefix="t")
    (tmp_path / "pool.jsonl").write_text(
        "".join(json.dumps({"id": f"t{k}", "text": t}) + "\n" for k, t in enumerate(texts))
    )
    (tmp_path / "pairs.jsonl").write_text("".join(
        json.dumps({"qry": "<|image_1|>", "qry_image_path": f"img/{i}.png", "pos_text": texts[i]}) + "\n"
        for i in range(n_img)
    ))  # fmt: skip
    summary = mine_negatives(tmp_path / "pairs.jsonl", tmp_path / "img", tmp_path / "pool.jsonl", tmp_path / "txt",
                             tmp_path / "mined.jsonl", fn_margin=0.05, depth=n_txt)  # fmt: skip
    q = images / np.linalg.norm(images, axis=1, keepdims=True)
    c = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    sims = q @ c.T
    got = [json.loads(line)["neg_text"] for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    filtered = 0
    for i in range(n_img):
        allowed = [k for k in range(n_txt) if k != i and sims[i, k] <= sims[i, i] + 0.05]
        filtered += sum(1 for k in range(n_txt) if k != i and sims[i, k] > sims[i, i] + 0.05)
        assert got[i] == texts[max(allowed, key=lambda k: (sims[i, k], -k))], i
    assert summary.mined == n_img and summary.filtered == filtered > 0  # the near-duplicates were filtered
    data = PairSet(tmp_path / "mined.jsonl", tmp_path / "img", fresh_embedder())
    assert data.sides == ["qry", "pos", "neg"] and data.batch([0, 1]).segments == [2, 2, 2]
