"""`modgap embed` with tiny CLIP and SigLIP models saved from configs and loaded like user checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run_cli
from modgap.embed import Columns, EmbedOptions, embed_modality, read_inputs
from modgap.encoders import load_encoder
from modgap.errors import ModgapError
from modgap.store import EmbeddingStore
from modgap.world.tiny import save_tiny_clip

COLOURS = ["red", "green", "blue", "yellow", "purple"]
SHAPES = ["circle", "square"]


def caption(k: int) -> str:
    return f"a {COLOURS[k % 5]} {SHAPES[k % 2]}" + " on the left" * (k % 3)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [caption(k) for k in range(40)]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def model_dir(request, tmp_path_factory, corpus):
    return save_tiny_clip(tmp_path_factory.mktemp(request.param) / "model", corpus, kind=request.param)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, corpus):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "model", corpus, kind="clip")


def draw(path, k: int, size=(40, 36)) -> None:
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    box = (4 + k % 7, 4, 24 + k % 9, 28)
    (d.ellipse if k % 2 == 0 else d.rectangle)(box, fill=COLOURS[k % 5])
    im.save(path)


def make_jsonl(tmp_path, n: int, corpus=None) -> "os.PathLike":
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for k in range(n):
        draw(tmp_path / "img" / f"{k}.png", k)
        rows.append({"id": f"s{k}", "text": caption(k), "image": f"img/{k}.png"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def direct_features(model_dir, texts, image_paths):
    """Per-item forward through the transformers model, as an independent reference."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    proc = AutoImageProcessor.from_pretrained(model_dir)
    pad = "max_length" if model.config.model_type == "siglip" else False
    with torch.no_grad():
        t = [
            model.get_text_features(
                **{
                    k: v
                    for k, v in tok([s], padding=pad, max_length=32, return_tensors="pt").items()
                    if k != "token_type_ids"
                }
            ).pooler_output[0]
            for s in texts
        ]
        v = [
            model.get_image_features(**proc(images=[Image.open(p).convert("RGB")], return_tensors="pt")).pooler_output[
                0
            ]
            for p in image_paths
        ]
    norm = lambda x: torch.nn.functional.normalize(torch.stack(x), dim=-1).numpy()  # noqa: E731
    return norm(t), norm(v)


def test_embed_matches_a_direct_transformers_forward(tmp_path, model_dir):
    data = make_jsonl(tmp_path, 23)
    run_cli(
        "embed",
        "--encoder",
        f"hf:{model_dir}",
        "--data",
        data,
        "--out-image",
        tmp_path / "img_store",
        "--out-text",
        tmp_path / "txt_store",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--num-workers",
        "1",
    )
    texts, images = EmbeddingStore.open(tmp_path / "txt_store"), EmbeddingStore.open(tmp_path / "img_store")
    assert texts.ids() == images.ids() == [f"s{k}" for k in range(23)]  # input order, despite length bucketing
    assert texts.manifest.encoder["name"] == f"hf:{model_dir}" and texts.manifest.encoder["revision"]
    assert texts.manifest.modality == "text" and texts.normalized
    assert texts.read_table().column("text").to_pylist() == [caption(k) for k in range(23)]
    ref_t, ref_v = direct_features(
        model_dir, [caption(k) for k in range(23)], [tmp_path / "img" / f"{k}.png" for k in range(23)]
    )
    np.testing.assert_allclose(texts.to_numpy(), ref_t, atol=1e-5)
    np.testing.assert_allclose(images.to_numpy(), ref_v, atol=1e-5)


def test_bad_images_and_empty_texts_are_listed_not_embedded(tmp_path, clip_dir):
    (tmp_path / "img").mkdir()
    draw(tmp_path / "img" / "good.png", 1)
    (tmp_path / "img" / "garbage.jpg").write_bytes(os.urandom(500))
    draw(tmp_path / "img" / "full.jpg", 2, size=(200, 200))
    data = (tmp_path / "img" / "full.jpg").read_bytes()
    (tmp_path / "img" / "cut.jpg").write_bytes(data[: len(data) // 2])
    rows = [
        {"id": "good", "text": "a red circle", "image": "img/good.png"},
        {"id": "garbage", "text": "   ", "image": "img/garbage.jpg"},
        {"id": "cut", "text": "a blue square", "image": "img/cut.jpg"},
        {"id": "gone", "text": "a green circle", "image": "img/nowhere.png"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli(
        "embed",
        "--encoder",
        clip_dir,
        "--data",
        tmp_path / "d.jsonl",
        "--out-image",
        tmp_path / "i",
        "--out-text",
        tmp_path / "t",
        "--num-workers",
        "0",
    )
    assert "image: embedded 1" in proc.stdout and "3 failed" in proc.stdout
    assert "text: embedded 3" in proc.stdout and "1 failed" in proc.stdout
    assert EmbeddingStore.open(tmp_path / "i").ids() == ["good"]
    fails = {r["id"]: r for r in map(json.loads, (tmp_path / "i" / "failures.jsonl").read_text().splitlines())}
    assert fails["garbage"]["reason"] == "not a readable image"
    assert fails["cut"]["reason"].startswith("corrupt or truncated image")
    assert fails["gone"]["reason"] == "missing file" and fails["gone"]["path"].endswith("img/nowhere.png")
    text_fails = [json.loads(x) for x in (tmp_path / "t" / "failures.jsonl").read_text().splitlines()]
    assert text_fails == [{"id": "garbage", "path": "", "reason": "empty text"}]


def test_clear_errors_before_any_data_is_read(tmp_path, clip_dir):
    data = make_jsonl(tmp_path, 3)
    proc = run_cli(
        "embed",
        "--encoder",
        f"hf:{tmp_path / 'nope'}",
        "--data",
        data,
        "--modality",
        "text",
        "--out-text",
        tmp_path / "t",
        check=False,
    )
    assert proc.returncode == 2 and "no such model directory" in proc.stderr
    from transformers import LlamaConfig, LlamaModel

    LlamaModel(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "llama")
    proc = run_cli(
        "embed",
        "--encoder",
        tmp_path / "llama",
        "--data",
        data,
        "--modality",
        "text",
        "--out-text",
        tmp_path / "t",
        check=False,
    )
    assert (
        proc.returncode == 2 and "is not a dual encoder (it lacks get_image_features, get_text_features)" in proc.stderr
    )
    (tmp_path / "noid.csv").write_text("name,text\na,hello\n")
    proc = run_cli(
        "embed",
        "--encoder",
        clip_dir,
        "--data",
        tmp_path / "noid.csv",
        "--modality",
        "text",
        "--out-text",
        tmp_path / "t",
        check=False,
    )
    assert proc.returncode == 2 and "no 'id' column (columns: ['name', 'text'])" in proc.stderr
    assert not (tmp_path / "t").exists()


def test_input_formats_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    data = make_jsonl(tmp_path, 4)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    expected_texts = [(r["id"], r["text"]) for r in rows]
    expected_images = [(r["id"], str(tmp_path / r["image"])) for r in rows]
    (tmp_path / "d.csv").write_text("id,text,image\n" + "".join(f"{r['id']},{r['text']},{r['image']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    revision = {
        "images": [{"id": r["id"], "image": r["image"]} for r in rows],
        "texts": [{"id": r["id"], "text": r["text"]} for r in rows],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(revision))
    for f in ("data.jsonl", "d.csv", "d.parquet", "dataset.json"):
        inp = read_inputs(tmp_path / f)
        assert inp.texts == expected_texts and inp.images == expected_images, f
    folder = read_inputs(tmp_path / "img")
    assert [k for k, _ in folder.images] == ["0.png", "1.png", "2.png", "3.png"]
    ds = Dataset.from_dict(
        {
            "key": [r["id"] for r in rows],
            "text": [r["text"] for r in rows],
            "image": [str(tmp_path / r["image"]) for r in rows],
        },
        features=Features({"key": Value("string"), "text": Value("string"), "image": ImageFeature()}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    inp = read_inputs(tmp_path / "hf", columns=Columns(id="key"))
    assert (
        inp.texts == expected_texts
        and inp.dataset is not None
        and [k for k, _ in inp.images] == ["s0", "s1", "s2", "s3"]
    )
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(ModgapError, match="duplicate text id"):
        read_inputs(tmp_path / "dup.jsonl")


def test_hf_dataset_with_decoded_images_embeds_like_files(tmp_path, clip_dir):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    data = make_jsonl(tmp_path, 6)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    ds = Dataset.from_dict(
        {"id": [r["id"] for r in rows], "image": [str(tmp_path / r["image"]) for r in rows]},
        features=Features({"id": Value("string"), "image": ImageFeature()}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    enc = load_encoder(str(clip_dir))
    opts = EmbedOptions(batch_size=4, num_workers=0, dtype="float32")
    embed_modality(enc, "image", read_inputs(tmp_path / "hf"), tmp_path / "a", opts)
    embed_modality(enc, "image", read_inputs(data), tmp_path / "b", opts)
    np.testing.assert_array_equal(
        EmbeddingStore.open(tmp_path / "a").to_numpy(), EmbeddingStore.open(tmp_path / "b").to_numpy()
    )


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, clip_dir):
    n = 3000
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"id": f"t{k}", "text": caption(k) + f" number {k % 7}"}) + "\n" for k in range(n))
    )
    args = [
        "--encoder",
        clip_dir,
        "--data",
        tmp_path / "d.jsonl",
        "--modality",
        "text",
        "--batch-size",
        "8",
        "--shard-rows",
        "64",
        "--num-workers",
        "0",
        "--dtype",
        "float32",
    ]
    run_cli("embed", *args, "--out-text", tmp_path / "whole")
    cmd = [sys.executable, "-m", "modgap.cli.main", "embed", *map(str, args), "--out-text", str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "cut" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    partial = len(EmbeddingStore.open(tmp_path / "cut"))
    assert 0 < partial < n, "the run was not interrupted mid-way"
    proc = run_cli("embed", *args, "--out-text", tmp_path / "cut")
    assert f"{partial} already stored" in proc.stdout
    whole, resumed = EmbeddingStore.open(tmp_path / "whole"), EmbeddingStore.open(tmp_path / "cut", verify=True)
    assert resumed.ids() == whole.ids()
    # Batches after the resume point are composed differently (length bucketing), hence float-level tolerance.
    np.testing.assert_allclose(resumed.to_numpy(), whole.to_numpy(), rtol=0, atol=1e-6)
