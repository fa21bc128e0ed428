"""ReVision training on stock 🤗 models: tiny Llama/Qwen2 from configs, tokenizer trained offline."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_store, run_cli
from modgap.errors import ModgapError
from modgap.mllm.chat import IGNORE, VISUAL_ID, caption_messages, encode, ensure_chat_template, place_image
from modgap.mllm.model import VisionLanguageModel
from modgap.mllm.train import TrainConfig, train
from modgap.world.lm import train_causal_lm
from modgap.world.tiny import build_chat_tokenizer, save_tiny_llm

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle", "star"]
PROMPT = "describe the image briefly ."
D = 16


def toy_world(n: int, seed: int):
    """Captions 'a <colour> <shape> .' and embeddings that encode them (plus noise)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((8, D))
    c, s = rng.integers(4, size=n), rng.integers(4, size=n)
    vecs = basis[c] + basis[4 + s] + 0.1 * rng.standard_normal((n, D))
    return [caption(COLOURS[a], SHAPES[b]) for a, b in zip(c, s, strict=False)], vecs.astype(np.float32)


def caption(colour: str, shape: str) -> str:
    return f"there is a {colour} {shape} in the picture ."


def write_captions(path: Path, captions: list[str], prefix: str) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "caption": c}) + "\n" for i, c in enumerate(captions)))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny chat LM that already speaks the caption language (as a real LLM would), plus data."""
    root = tmp_path_factory.mktemp("mllm")
    captions, vecs = toy_world(256, seed=0)
    corpus = [*(caption(c, s) for c in COLOURS for s in SHAPES), PROMPT, "what is shown ?"]
    raw = save_tiny_llm(root / "raw-llm", corpus, kind="llama")
    tok = build_chat_tokenizer(corpus)
    # Captions, and replies that repeat what the user said: the in-context use a real LLM brings along.
    texts = [tok.apply_chat_template(caption_messages(c, PROMPT), tokenize=False) for c in corpus[:16]]
    texts += [tok.apply_chat_template(caption_messages(c, f"{c} {PROMPT}"), tokenize=False) for c in corpus[:16]]
    train_causal_lm(raw, texts, root / "llm", steps=200, batch_size=16)
    make_store(root / "text", vecs, prefix="t", modality="text")
    test_captions, test_vecs = toy_world(64, seed=1)
    make_store(root / "test", test_vecs, prefix="x", modality="image")
    return {
        "root": root,
        "llm": root / "llm",
        "captions": captions,
        "vecs": vecs,
        "data": write_captions(root / "caps.jsonl", captions, "t"),
        "store": root / "text",
        "test_data": write_captions(root / "test.jsonl", test_captions, "x"),
        "test_store": root / "test",
    }


def config(world, out: Path, **kw) -> TrainConfig:
    base = dict(
        stage="pretrain",
        out=str(out),
        data=[str(world["data"])],
        embeddings=[str(world["store"])],
        llm=str(world["llm"]),
        batch_size=16,
        lr=3e-3,
        report_to="none",
        prompt=PROMPT,
    )
    return TrainConfig(**{**base, **kw})


def logits(model: VisionLanguageModel, vecs: np.ndarray) -> torch.Tensor:
    enc = encode(model.tokenizer, caption_messages("a red star .", PROMPT), model.config.num_visual_tokens)
    ids = torch.tensor([enc.input_ids] * len(vecs))
    model.eval()
    with torch.no_grad():
        return model(ids, torch.ones_like(ids), model.visual_inputs(vecs, "text")).logits


# -- chat formatting -------------------------------------------------------------------------------
def test_labels_cover_exactly_the_assistant_reply():
    tok = build_chat_tokenizer(["a red star .", PROMPT])
    enc = encode(tok, caption_messages("a red star .", PROMPT), 4)
    assert enc.input_ids.count(VISUAL_ID) == 4
    learned = [t for t, lab in zip(enc.input_ids, enc.labels, strict=False) if lab != IGNORE]
    assert tok.convert_ids_to_tokens(learned) == ["a", "red", "star", ".", "<|end|>"]
    assert all(lab in (IGNORE, t) for t, lab in zip(enc.input_ids, enc.labels, strict=False))


def test_an_encoding_is_reused_only_for_the_same_tokenizer_and_inputs():
    """The in-process reuse of encodings (the demo's models share a training set) gives what a fresh encode
    gives, is not changed by a caller editing its copy, and misses on another vocabulary or chat template."""
    from modgap.mllm import chat

    messages = caption_messages("a red star .", PROMPT)
    tok = build_chat_tokenizer(["a red star .", PROMPT])
    first = encode(tok, messages, 4)
    first.input_ids.append(-7)
    again = encode(tok, messages, 4)
    assert again.input_ids == chat._encode(tok, messages, 4, None, False).input_ids and -7 not in again.input_ids
    tok.add_tokens(["red star"])  # a new vocabulary: the same text tokenises differently, so it must not be reused
    assert encode(tok, messages, 4).input_ids == chat._encode(tok, messages, 4, None, False).input_ids
    assert encode(tok, messages, 4).input_ids != again.input_ids
    tok.chat_template = tok.chat_template.replace("<|end|>", "<|end|><|end|>")
    assert encode(tok, messages, 4).input_ids == chat._encode(tok, messages, 4, None, False).input_ids


def test_fallback_template_for_tokenizers_without_one():
    tok = build_chat_tokenizer(["a red star .", PROMPT, "user", "assistant", ":"], chat_template=None)
    ensure_chat_template(tok)
    messages = [
        {"role": "user", "content": "<image>\nwhat ?"},
        {"role": "assistant", "content": "a star ."},
        {"role": "user", "content": "colour ?"},
        {"role": "assistant", "content": "red"},
    ]
    enc = encode(tok, messages, 2)
    learned = tok.convert_ids_to_tokens([t for t, lab in zip(enc.input_ids, enc.labels, strict=False) if lab != IGNORE])
    assert learned == ["a", "star", ".", "<|end|>", "red", "<|end|>"]  # both replies, their end tokens


def test_placeholder_rules():
    messages = [{"role": "user", "content": "what ?"}, {"role": "assistant", "content": "a star"}]
    placed, added = place_image(messages, "row 0")
    assert added and placed[0]["content"].startswith("<image>\n")
    twice = [{"role": "user", "content": "<image> <image>"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(ModgapError, match="row 7: <image> must appear once"):
        place_image(twice, "row 7")


def test_overlong_sample_is_cut_from_the_end_or_dropped():
    tok = build_chat_tokenizer(["a red star .", PROMPT])
    messages = caption_messages("a red star . a red star . a red star .", PROMPT)
    full = encode(tok, messages, 4)
    cut = encode(tok, messages, 4, max_length=len(full.input_ids) - 3)
    assert cut.truncated and cut.input_ids == full.input_ids[:-3]
    with pytest.raises(ModgapError, match="no reply token left"):
        encode(tok, messages, 4, max_length=12)


# -- training --------------------------------------------------------------------------------------
def test_pretrain_drives_the_loss_down_and_captions_held_out_embeddings(world, tmp_path):
    result = train(config(world, tmp_path / "run", epochs=20, lr=1e-2))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.5 * first, (first, last)  # the rest is the frozen LM's own uncertainty
    model = VisionLanguageModel.load(result.model_dir)
    assert model.config.llm_weights is None  # the frozen LLM is not copied
    assert not (result.model_dir / "llm").exists()
    captions, vecs = toy_world(32, seed=5)
    replies = model.generate(model.visual_inputs(vecs, "text"))
    assert (
        np.mean([r.replace(" .", ".") == c.replace(" .", ".") for r, c in zip(replies, captions, strict=False)]) > 0.8
    )
    # The base LLM is untouched by pretraining.
    base = load_file(str(world["llm"] / "model.safetensors"))
    for name, p in model.llm.named_parameters():
        assert torch.equal(p, base[name])


@pytest.mark.parametrize("tune", ["projector", "lora"])
def test_save_then_load_gives_the_trained_models_logits(world, tmp_path, tune):
    """The saved directory, loaded back, is the model as trained (compared with the one in memory)."""
    result = train(
        config(world, tmp_path / "run", max_steps=3, tune=tune, stage="sft" if tune == "lora" else "pretrain")
    )
    loaded = VisionLanguageModel.load(result.model_dir)
    vecs = world["vecs"][:4]
    torch.testing.assert_close(logits(loaded, vecs), logits(result.model, vecs), rtol=1e-5, atol=1e-5)


def test_resume_takes_the_same_steps_as_an_uninterrupted_run(world, tmp_path):
    full = train(config(world, tmp_path / "full", max_steps=12, grad_accum=2, batch_size=8, noise_std=0.05))
    stopped = train(
        config(world, tmp_path / "cut", max_steps=12, grad_accum=2, batch_size=8, noise_std=0.05, stop_after=5),
    )
    assert stopped.stopped_early and stopped.steps == 5
    assert not (tmp_path / "cut" / "model").exists()
    resumed = train(
        config(world, tmp_path / "cut", max_steps=12, grad_accum=2, batch_size=8, noise_std=0.05, resume=True),
    )
    assert resumed.steps == 12
    assert stopped.losses + resumed.losses == pytest.approx(full.losses, rel=1e-6)
    a = load_file(str(full.model_dir / "projector.safetensors"))
    b = load_file(str(resumed.model_dir / "projector.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_resume_refuses_changed_settings(world, tmp_path):
    train(config(world, tmp_path / "run", max_steps=4, stop_after=2))
    with pytest.raises(ModgapError, match="lr"):
        train(config(world, tmp_path / "run", max_steps=4, lr=1e-2, resume=True))
    with pytest.raises(ModgapError, match="already exists"):
        train(config(world, tmp_path / "run", max_steps=4))


@pytest.mark.parametrize("tune", ["full", "lora"])
def test_sft_after_pretrain(world, tmp_path, tune):
    pre = train(config(world, tmp_path / "pre", epochs=4))
    sft = train(
        config(
            world,
            tmp_path / "sft",
            stage="sft",
            llm=None,
            init=str(pre.model_dir),
            tune=tune,
            epochs=3,
            data=[str(world["test_data"])],
            embeddings=[str(world["test_store"])],
            lr=1e-3,
            batch_size=8,
        ),
    )
    assert np.mean(sft.losses[-3:]) < np.mean(sft.losses[:3])
    saved = sft.model_dir / ("adapter" if tune == "lora" else "llm")
    assert saved.is_dir()
    model = VisionLanguageModel.load(sft.model_dir)
    assert model.config.llm_weights == ("adapter" if tune == "lora" else "llm")
    base = load_file(str(world["llm"] / "model.safetensors"))
    if tune == "full":
        assert not torch.equal(model.llm.get_input_embeddings().weight, base["model.embed_tokens.weight"])
    again = VisionLanguageModel.load(sft.model_dir)
    vecs = world["vecs"][:3]
    assert torch.equal(logits(model, vecs), logits(again, vecs))


def test_missing_ids_are_counted_and_stop_the_run_over_the_limit(world, tmp_path):
    rows = [{"id": f"t{i}", "caption": c} for i, c in enumerate(world["captions"][:40])]
    rows += [{"id": "nope-1", "caption": "a red star ."}, {"id": "nope-2", "caption": "a red star ."}]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(rows))
    result = train(config(world, tmp_path / "ok", data=[str(data)], max_steps=1, max_missing=0.1))
    report = json.loads((tmp_path / "ok" / "data_report.json").read_text())[0]
    assert report["missing"] == 2 and report["missing_ids"] == ["nope-1", "nope-2"] and report["samples"] == 40
    assert result.steps == 1
    with pytest.raises(ModgapError, match=r"2 of 42 rows .* no embedding .*nope-1"):
        train(config(world, tmp_path / "bad", data=[str(data)], max_steps=1, max_missing=0.01))
    assert not (tmp_path / "bad" / "model").exists()


def test_qwen2_and_repeat_projector(world, tmp_path):
    llm = save_tiny_llm(tmp_path / "qwen", world["captions"] + [PROMPT], kind="qwen2")
    result = train(
        config(
            world,
            tmp_path / "run",
            llm=str(llm),
            token_mode="repeat",
            num_visual_tokens=32,
            projector="linear",
            max_steps=3,
        ),
    )
    model = VisionLanguageModel.load(result.model_dir)
    tokens = model.projector(torch.randn(2, D))
    assert tokens.shape == (2, 32, model.config.hidden_size)
    assert torch.equal(tokens[:, 0], tokens[:, 31])  # the reference design: k identical tokens


# -- command line ----------------------------------------------------------------------------------
def test_cli_pretrain_generate_and_eval(world, tmp_path):
    run = tmp_path / "run"
    run_cli(
        "train",
        "pretrain",
        "--llm",
        world["llm"],
        "--data",
        world["data"],
        "--embeddings",
        world["store"],
        "--out",
        run,
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--prompt",
        PROMPT,
    )
    assert list((run / "logs").rglob("events.out.tfevents.*"))  # TensorBoard by default
    proc = run_cli("generate", "--model", run, "--embeddings", world["test_store"], "--ids", "x0,x1")
    lines = proc.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["x0", "x1"]
    proc = run_cli(
        "eval",
        "caption",
        "--model",
        run,
        "--data",
        world["test_data"],
        "--embeddings",
        world["test_store"],
        "--out",
        tmp_path / "eval",
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["samples"] == 64 and metrics["bleu4"] > 0.5 and metrics["cider"] > 1.0
    preds = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert preds[0]["id"] == "x0" and preds[0]["references"]

    # VQA: the captioning prompt as the question, the caption's colour word and the whole caption as answers.
    test_captions = [json.loads(x)["caption"] for x in world["test_data"].read_text().splitlines()]
    questions = []
    for i, c in enumerate(test_captions[:24]):
        questions.append({"id": f"q{i}", "image": f"x{i}", "question": PROMPT, "answer": c.upper(), "type": "whole"})
        questions.append({"id": f"w{i}", "image": f"x{i}", "question": PROMPT, "answers": [c.split()[3]] * 3,
                          "type": "word"})  # fmt: skip
    questions.append({"id": "gone", "image": "nowhere", "question": PROMPT, "answer": "x"})
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    proc = run_cli("eval", "vqa", "--model", run, "--data", tmp_path / "questions.jsonl",
                   "--embeddings", world["test_store"], "--max-new-tokens", 12, "--out", tmp_path / "vqa")  # fmt: skip
    assert "1 questions skipped: image not in" in proc.stderr
    vqa = json.loads((tmp_path / "vqa" / "metrics.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "vqa" / "predictions.jsonl").read_text().splitlines()]
    assert vqa["questions"] == len(rows) == 48 and vqa["missing"] == 1

    def plain(text: str) -> str:  # lower case, no punctuation or articles: what VQAv2 normalisation does here
        return " ".join(w for w in re.sub(r"[^a-z ]", " ", text.lower()).split() if w not in ("a", "an", "the"))

    whole = [plain(r["prediction"]) == plain(r["answers"][0]) for r in rows if r["id"].startswith("q")]
    assert vqa["accuracy/whole"] == pytest.approx(sum(whole) / 24) and vqa["accuracy/whole"] > 0.5
    assert vqa["accuracy/word"] == 0.0  # a whole caption is not the one-word answer
    assert vqa["accuracy"] == pytest.approx((sum(whole) + 0) / 48)


def test_cli_errors_are_one_line(world, tmp_path):
    proc = run_cli(
        "train",
        "pretrain",
        "--llm",
        tmp_path / "missing",
        "--data",
        world["data"],
        "--embeddings",
        world["store"],
        "--out",
        tmp_path / "r",
        check=False,
    )
    assert proc.returncode == 2 and "no such model directory" in proc.stderr
    proc = run_cli(
        "train",
        "sft",
        "--init",
        tmp_path,
        "--data",
        world["data"],
        "--embeddings",
        world["store"],
        "--out",
        tmp_path / "r",
        check=False,
    )
    assert proc.returncode == 2 and "not a modgap model directory" in proc.stderr


def test_two_process_ddp_equals_one_process_with_the_global_batch(world, tmp_path):
    from test_distributed import torchrun

    common = [
        "train",
        "pretrain",
        "--llm",
        world["llm"],
        "--data",
        world["data"],
        "--embeddings",
        world["store"],
        "--max-steps",
        "4",
        "--lr",
        "3e-3",
        "--report-to",
        "none",
        "--prompt",
        PROMPT,
    ]
    proc = torchrun(*common, "--out", tmp_path / "ddp", "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_cli(*common, "--out", tmp_path / "one", "--batch-size", "8")
    a = load_file(str(tmp_path / "ddp" / "model" / "projector.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "projector.safetensors"))
    for k in a:  # every caption has the same length, so the mean of rank means is the global mean
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


# -- the gathered state of sharded engines, and the two routes of aligned text ---------------------
@pytest.mark.parametrize("tune", ["full", "lora"])
def test_save_writes_the_given_full_state_not_the_modules_own(world, tmp_path, tune):
    """Under ZeRO-3/FSDP the module holds only shards; save(state_dict=gathered) must write the gathered one."""
    from modgap.mllm.train import _set_trainable

    cfg = config(world, tmp_path / "unused", tune=tune)
    model = _set_trainable(VisionLanguageModel.build(str(world["llm"]), D, seed=0), cfg)
    gathered = {k: v.detach().clone() + 0.5 for k, v in model.state_dict().items()}
    model.save(tmp_path / "model", state_dict=gathered)
    projector = load_file(str(tmp_path / "model" / "projector.safetensors"))
    for k, v in projector.items():
        assert torch.equal(v, gathered[f"projector.{k}"]) and not torch.equal(v, model.state_dict()[f"projector.{k}"])
    again = VisionLanguageModel.load(tmp_path / "model")
    trained = [k for k in gathered if k.startswith("llm.") and (tune == "full" or "lora_" in k)]
    assert trained
    for k in trained:
        assert torch.equal(again.state_dict()[k], gathered[k]), k
    with pytest.raises(ModgapError, match="no projector"):
        model.save(tmp_path / "bad", state_dict={k: v for k, v in gathered.items() if k.startswith("llm.")})


def _routes(world, tmp_path, method):
    """Route (a): align apply -> aligned store; route (b): raw store + the aligner. Both as training sets."""
    from modgap.align import apply_to_store, make_aligner
    from modgap.hub import load_tokenizer
    from modgap.mllm.data import build_training_set, training_aligner
    from modgap.store import EmbeddingStore

    aligner = make_aligner(method).fit(world["store"], world["test_store"])
    aligner.save(tmp_path / f"{method}-aligner")
    apply_to_store(aligner, world["store"], tmp_path / f"{method}-aligned")
    tok = load_tokenizer(str(world["llm"]))
    sets = {}
    for route, store, aligner_dir in (
        ("a", tmp_path / f"{method}-aligned", None),
        ("b", world["store"], str(tmp_path / f"{method}-aligner")),
    ):
        chosen = training_aligner([EmbeddingStore.open(store)], aligner_dir)
        data = build_training_set([(world["data"], store)], tok, 8, prompt=PROMPT, max_length=64)
        sets[route] = (data, chosen)
    return sets


@pytest.mark.parametrize("method", ["none", "mean-shift", "c3", "realign", "gaussian-ot", "noise"])
def test_aligned_store_and_aligner_on_the_fly_give_the_same_visual_inputs(world, tmp_path, method):
    from modgap.mllm.data import batch_visual

    sets = _routes(world, tmp_path, method)
    (data_a, aligner_a), (data_b, aligner_b) = sets["a"], sets["b"]
    assert aligner_a.method == aligner_b.method == method
    everything = list(range(len(data_a)))  # the noise method draws its noise per store row: take them in order
    a = batch_visual(data_a, everything, aligner_a, train=False)
    b = batch_visual(data_b, everything, aligner_b, train=False)
    torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
    if method == "mean-shift":  # its output is not unit-norm on purpose; the old route re-normalised it
        assert not torch.allclose(a.norm(dim=1), torch.ones(len(a)), atol=1e-3)
    if method != "noise":  # the noise method adds fresh noise per step on the fly, a fixed draw in a store
        rows = [5, 17, 3, 200]
        a = batch_visual(data_a, rows, aligner_a, train=True, generator=torch.Generator().manual_seed(7))
        b = batch_visual(data_b, rows, aligner_b, train=True, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


def test_training_on_an_aligned_store_carries_its_aligner_and_refuses_a_second_one(world, tmp_path):
    _routes(world, tmp_path, "mean-shift")
    aligned = str(tmp_path / "mean-shift-aligned")
    with pytest.raises(ModgapError, match="already aligned with 'mean-shift'.*drop --aligner"):
        train(config(world, tmp_path / "twice", embeddings=[aligned], aligner=str(tmp_path / "mean-shift-aligner")))
    with pytest.raises(ModgapError, match="raw text store"):
        train(
            config(world, tmp_path / "mixed", data=[str(world["data"])] * 2, embeddings=[aligned, str(world["store"])])
        )
    a = train(config(world, tmp_path / "a", embeddings=[aligned], max_steps=3))
    b = train(config(world, tmp_path / "b", aligner=str(tmp_path / "mean-shift-aligner"), max_steps=3))
    assert a.losses == pytest.approx(b.losses, abs=1e-6)
    model_a, model_b = VisionLanguageModel.load(a.model_dir), VisionLanguageModel.load(b.model_dir)
    assert model_a.aligner is not None and model_a.aligner.method == "mean-shift"
    torch.testing.assert_close(model_a.projector.state_dict(), model_b.projector.state_dict(), rtol=0, atol=1e-6)
    # Generating from the aligned store uses its rows as they are; from the raw store, through the aligner.
    from modgap.mllm.infer import StoreInputs

    ids = ["t0", "t1", "t2"]
    torch.testing.assert_close(
        StoreInputs(model_a, aligned).ids(ids), StoreInputs(model_a, world["store"]).ids(ids), rtol=0, atol=2e-6
    )


def test_train_options_are_the_config_fields(tmp_path):
    import dataclasses

    import typer

    from modgap.cli.train import app
    from modgap.files import load_dataclass
    from modgap.mllm.train import TrainConfig

    command = typer.main.get_command(app)
    for stage in ("pretrain", "sft"):
        options = {p.name for p in command.commands[stage].params}
        assert options == {f.name for f in dataclasses.fields(TrainConfig)} - {"stage"} | {"config"}
    (tmp_path / "run.yaml").write_text("out: runs/x\nbatch_size: 3\nlr: 0.5\ndata: [a.jsonl]\nembeddings: [s]\n")
    cfg = load_dataclass(TrainConfig, tmp_path / "run.yaml", {"batch_size": 4}, stage="sft")
    assert (cfg.stage, cfg.batch_size, cfg.lr, cfg.data, cfg.tune) == ("sft", 4, 0.5, ["a.jsonl"], "full")
    (tmp_path / "typo.yaml").write_text("out: runs/x\nbatchsize: 3\n")
    proc = run_cli("train", "pretrain", "--config", tmp_path / "typo.yaml", check=False)
    assert proc.returncode == 2 and "unknown settings ['batchsize']" in proc.stderr
