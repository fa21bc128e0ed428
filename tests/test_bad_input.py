"""Issue 24's cases: each fault reproduced, then the clear error and the untouched inputs asserted.

Outputs are replaced only when modgap made them; settings files are read; NaN/Inf/zero vectors are refused
wherever vectors are read; bad bytes, full disks, damaged checkpoints and broken servers give one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import gapped_pair, make_store, run_cli
from modgap.errors import ModgapError
from modgap.files import check_replaceable

PROMPT = "describe the image briefly ."
WORDS = ["a", "red", "green", "blue", "circle", "square", "star", "there", "is", "in", "the", "picture", "."]


def _fails(*args, match: str, cwd: Path | None = None) -> str:
    proc = run_cli(*args, check=False, cwd=cwd)
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _no_hidden_temp(path: Path) -> bool:
    return not [p for p in path.rglob(".*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def lm_world(tmp_path_factory):
    """An (untrained) tiny chat LM, captions, and a 40-row text store whose rows 3 and 7 are NaN and zero."""
    from modgap.world.tiny import save_tiny_llm

    root = tmp_path_factory.mktemp("bad-lm")
    captions = [f"there is a {c} {s} in the picture ." for c in WORDS[1:4] for s in WORDS[4:7]] * 5
    save_tiny_llm(root / "llm", [*captions, PROMPT], kind="llama", hidden=32, layers=1)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(captions), 8)).astype(np.float32)
    make_store(root / "good", vecs, prefix="t", modality="text")
    bad = vecs.copy()
    bad[3] = np.nan
    bad[7] = 0
    make_store(root / "bad", bad, prefix="t", modality="text")
    data = root / "caps.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "caption": c}) + "\n" for i, c in enumerate(captions)))
    return {"root": root, "llm": root / "llm", "data": data, "good": root / "good", "bad": root / "bad"}


def _train_args(w, out: Path, store: Path | None = None, *extra: str) -> list:
    return ["train", "pretrain", "--llm", w["llm"], "--data", w["data"], "--embeddings", store or w["good"],
            "--out", out, "--report-to", "none", "--prompt", PROMPT, "--batch-size", "8", *extra]  # fmt: skip


# -- 1. --overwrite replaces only what modgap made ---------------------------------------------------------
def test_align_apply_overwrite_never_deletes_its_own_source_or_foreign_files(tmp_path, rng):
    t, i = gapped_pair(rng, 60, 60, 8)
    parent = tmp_path / "parent"
    make_store(parent / "src", t, modality="text")
    make_store(tmp_path / "img", i, modality="image")
    (parent / "notes.txt").write_text("my notes")
    run_cli("align", "fit", "--source", parent / "src", "--target", tmp_path / "img", "--out", tmp_path / "al")
    before = _tree(parent)
    args = ["align", "apply", "--aligner", tmp_path / "al", "--source", parent / "src"]
    _fails(*args, "--out", parent, "--overwrite", match="it holds the input")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("years of work")
    _fails(*args, "--out", tmp_path / "foreign", "--overwrite", match="is not a modgap output")
    _fails(*args, "--out", ".", "--overwrite", match="it holds the working folder", cwd=tmp_path / "foreign")
    assert _tree(parent) == before and (tmp_path / "foreign" / "thesis.tex").read_text() == "years of work"
    # What modgap wrote is replaced, and a fit refuses to replace anything but an aligner.
    run_cli(*args, "--out", tmp_path / "aligned")
    run_cli(*args, "--out", tmp_path / "aligned", "--overwrite")
    fit = ["align", "fit", "--source", parent / "src", "--target", tmp_path / "img"]
    _fails(*fit, "--out", tmp_path / "foreign", match="is not a modgap output")
    _fails(*fit, "--out", tmp_path / "aligned", match="holds no aligner.json")
    run_cli(*fit, "--out", tmp_path / "al")  # an aligner directory is replaced, as before
    assert _no_hidden_temp(tmp_path)


def test_export_import_and_run_dirs_follow_the_same_rule(tmp_path, rng, lm_world, monkeypatch):
    from modgap.store import EmbeddingStore, export_store, import_store

    store = make_store(tmp_path / "s", rng.normal(size=(5, 4)).astype(np.float32))
    export_store("npy", store, tmp_path / "exp")
    export_store("npy", store, tmp_path / "exp", overwrite=True)  # its own export: replaced
    with pytest.raises(ModgapError, match="it holds the input"):
        import_store("npy", tmp_path / "exp", tmp_path / "exp", overwrite=True)
    with pytest.raises(ModgapError, match="it holds the input"):
        export_store("parquet", EmbeddingStore.open(tmp_path / "s"), tmp_path, overwrite=True)
    assert (tmp_path / "s" / "manifest.json").is_file()
    # Training: a directory of someone else's files is not a run.
    somedir = tmp_path / "somedir"
    somedir.mkdir()
    (somedir / "data.csv").write_text("precious")
    _fails(*_train_args(lm_world, somedir, None, "--max-steps", "1", "--overwrite"), match="is not a modgap output")
    assert (somedir / "data.csv").read_text() == "precious"
    monkeypatch.chdir(somedir)
    with pytest.raises(ModgapError, match="it holds the working folder"):
        check_replaceable(tmp_path, ("data.csv",))  # even with the marker: the folder the user is in


# -- 2. --config values are used, the command line wins --------------------------------------------------
def test_config_file_settings_reach_the_run_and_the_command_line_wins(tmp_path, lm_world):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"out: {tmp_path / 'run'}\nllm: {lm_world['llm']}\ndata: [{lm_world['data']}]\n"
        f"embeddings: [{lm_world['good']}]\nmax_steps: 3\nbatch_size: 2\nlr: 1e-4\nreport_to: none\n"
        "gradient_checkpointing: true\nprompt: from the file\nseed: 1\n"
    )
    run_cli("train", "pretrain", "--config", cfg, "--seed", "5", "--no-gradient-checkpointing")
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (saved["max_steps"], saved["batch_size"], saved["lr"], saved["report_to"]) == (3, 2, 1e-4, "none")
    assert saved["prompt"] == "from the file" and saved["data"] == [str(lm_world["data"])]
    assert saved["seed"] == 5 and saved["gradient_checkpointing"] is False  # the command line wins
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nmax_steps: three\n")
    _fails("train", "pretrain", "--config", bad, match="setting max_steps must be int")
    bad.write_text("out: [x\n")
    _fails("train", "pretrain", "--config", bad, match="bad.yaml:2: cannot parse")


def test_every_setting_kind_takes_file_then_command_line(tmp_path):
    """str, int, float, bool, optional and list settings through the generated command."""
    import dataclasses

    import typer
    from typer.testing import CliRunner

    from modgap.cli.options import settings_command
    from modgap.files import from_mapping, read_settings, setting

    @dataclasses.dataclass
    class Kinds:
        name: str = setting("default", "str")
        count: int = setting(1, "int")
        rate: float = setting(0.5, "float")
        flag: bool = setting(False, "bool")
        maybe: int | None = setting(None, "optional")
        items: list[str] = setting(list, "list")

    seen = {}

    def run(given, config_file):
        seen["cfg"] = from_mapping(Kinds, {**(read_settings(config_file) if config_file else {}), **given}, "test")

    app = typer.Typer()
    app.command("go")(settings_command(Kinds, (), run))
    app.command("other")(lambda: None)
    cfg = tmp_path / "k.yaml"
    cfg.write_text("name: file\ncount: 7\nrate: 2e-3\nflag: true\nmaybe: 3\nitems: [a, b]\n")
    result = CliRunner().invoke(app, ["go", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert dataclasses.astuple(seen["cfg"]) == ("file", 7, 2e-3, True, 3, ["a", "b"])
    argv = ["go", "--config", str(cfg), "--name", "cli", "--count", "8", "--rate", "0.25", "--no-flag",
            "--maybe", "4", "--items", "c"]  # fmt: skip
    assert CliRunner().invoke(app, argv).exit_code == 0
    assert dataclasses.astuple(seen["cfg"]) == ("cli", 8, 0.25, False, 4, ["c"])
    assert CliRunner().invoke(app, ["go"]).exit_code == 0
    assert dataclasses.astuple(seen["cfg"]) == ("default", 1, 0.5, False, None, [])


# -- 3. vectors are checked wherever they are read; a non-finite loss stops the run ------------------------
def test_training_refuses_nan_and_zero_embeddings_or_skips_and_lists_them(tmp_path, lm_world):
    line = _fails(*_train_args(lm_world, tmp_path / "r", lm_world["bad"], "--max-steps", "2"), match="unusable")
    assert "'t3' (nan)" in line and "'t7' (zero)" in line and "--on-bad skip" in line
    assert not (tmp_path / "r" / "model").exists()
    run_cli(*_train_args(lm_world, tmp_path / "r2", lm_world["bad"], "--max-steps", "2", "--on-bad", "skip"))
    listed = [json.loads(x) for x in (tmp_path / "r2" / "bad_rows.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["reason"]) for r in listed) == [("t3", "nan"), ("t7", "zero")]
    report = json.loads((tmp_path / "r2" / "data_report.json").read_text())[0]
    assert report["bad_vectors"] == 2 and report["samples"] == 43
    from safetensors.numpy import load_file

    weights = load_file(str(tmp_path / "r2" / "model" / "projector.safetensors"))
    assert all(np.isfinite(v).all() for v in weights.values())


def test_a_loss_that_turns_non_finite_stops_the_run_without_a_model(tmp_path, lm_world):
    from modgap.mllm.config import TrainConfig
    from modgap.mllm.train import train

    cfg = TrainConfig(out=str(tmp_path / "r"), llm=str(lm_world["llm"]), data=[str(lm_world["data"])],
                      embeddings=[str(lm_world["good"])], report_to="none", batch_size=8, max_steps=6,
                      lr=1e30, warmup_ratio=0.0, max_grad_norm=0.0)  # fmt: skip
    with pytest.raises(ModgapError, match=r"the loss is (nan|inf).*no model written"):
        train(cfg)
    assert not (tmp_path / "r" / "model").exists()


def test_generate_and_eval_caption_refuse_nan_rows_or_skip_them(tmp_path, lm_world):
    run = tmp_path / "run"
    run_cli(*_train_args(lm_world, run, None, "--max-steps", "1"))
    _fails("generate", "--model", run, "--embeddings", lm_world["bad"], "--ids", "t2,t3", match="'t3' (nan)")
    proc = run_cli("generate", "--model", run, "--embeddings", lm_world["bad"], "--ids", "t2,t3", "--on-bad", "skip",
                   "--max-new-tokens", "2")  # fmt: skip
    assert [x.split("\t")[0] for x in proc.stdout.strip().splitlines()] == ["t2"] and "t3" in proc.stderr
    args = ["eval", "caption", "--model", run, "--data", lm_world["data"], "--embeddings", lm_world["bad"],
            "--limit", "8", "--max-new-tokens", "2"]  # fmt: skip
    _fails(*args, match="'t3' (nan)")
    run_cli(*args, "--on-bad", "skip", "--out", tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["samples"] == 6 and metrics["bad"] == 2
    assert [json.loads(x)["id"] for x in (tmp_path / "eval" / "bad_rows.jsonl").read_text().splitlines()] == [
        "t3",
        "t7",
    ]
    # A model directory without its projector is one line, not a traceback.
    (run / "model" / "projector.safetensors").unlink()
    _fails("generate", "--model", run, "--text", "a red star", match="missing projector.safetensors")


# -- 4. method parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "param", "match"),
    [
        ("noise", "std=nan", "std must be a finite number"),
        ("noise", "std=inf", "std must be a finite number"),
        ("noise", "std=-1", "std must not be negative"),
        ("c3", "noise_std=nan", "noise_std must be a finite number"),
        ("gaussian-ot", "shrinkage=nan", "shrinkage must be a finite number"),
    ],
)
def test_nan_inf_negative_parameters_are_refused(method, param, match):
    from modgap.align import make_aligner, parse_params

    with pytest.raises(ModgapError, match=match):
        make_aligner(method, **parse_params(method, [param]))


# -- 5. embed appends only rows made the same way -----------------------------------------------------------
def test_embed_refuses_to_add_rows_of_another_encoder_or_setting(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    from modgap.embed import Columns, embed_data
    from modgap.hub import resolve

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "caption": f"a red circle {i}"}) + "\n" for i in range(6)))
    cols = Columns(text="caption")
    embed_data("builtin:tiny-clip", data, {"text": tmp_path / "s"}, columns=cols)
    before = _tree(tmp_path / "s")
    data.write_text(data.read_text() + json.dumps({"id": "c6", "caption": "a blue star"}) + "\n")
    with pytest.raises(ModgapError, match=r"embedded differently \(max_text_length \(\d+ -> 8\)\)"):
        embed_data("builtin:tiny-clip", data, {"text": tmp_path / "s"}, columns=cols, max_text_length=8)
    other = tmp_path / "other-clip"
    model = CLIPModel.from_pretrained(resolve("builtin:tiny-clip"))
    with __import__("torch").no_grad():
        model.text_projection.weight.mul_(2)
    model.save_pretrained(other)
    CLIPProcessor.from_pretrained(resolve("builtin:tiny-clip")).save_pretrained(other)
    with pytest.raises(ModgapError, match=r"name .* revision"):
        embed_data(f"hf:{other}", data, {"text": tmp_path / "s"}, columns=cols)
    assert _tree(tmp_path / "s") == before
    # --modality both checks the text side before any image is embedded.
    (tmp_path / "img.jsonl").write_text(json.dumps({"id": "i0", "image": "x.png"}) + "\n")
    with pytest.raises(ModgapError, match="no text items"):
        embed_data("builtin:tiny-clip", tmp_path / "img.jsonl", {"image": tmp_path / "i", "text": tmp_path / "t"})
    assert not (tmp_path / "i").exists()


# -- 6. mining pool ---------------------------------------------------------------------------------------
def test_mine_refuses_duplicate_pool_ids_and_pool_ids_without_embeddings(tmp_path, rng):
    from modgap.embedder.mine import mine_negatives

    make_store(tmp_path / "img", rng.normal(size=(2, 4)).astype(np.float32), prefix="i")
    make_store(tmp_path / "txt", rng.normal(size=(3, 4)).astype(np.float32), prefix="p")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"qry_image_path": "i0", "pos_text": "text 0"}) + "\n")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in [("p0", "text 0"), ("p1", "x"),
                                                                                 ("p1", "y")]))  # fmt: skip
    args = (tmp_path / "rows.jsonl", tmp_path / "img", pool, tmp_path / "txt", tmp_path / "out.jsonl")
    with pytest.raises(ModgapError, match=r"pool.jsonl: row 3: id 'p1' already on row 2"):
        mine_negatives(*args)
    pool.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in [("p0", "text 0"), ("p9", "x")]))
    with pytest.raises(ModgapError, match=r"1 pool id\(s\) have no embedding .* \['p9'\]"):
        mine_negatives(*args)
    assert not (tmp_path / "out.jsonl").exists()


# -- 7, 8, 19. import: checked as stored; null and empty ids; duplicate ids named by line ------------------
def test_import_checks_after_conversion_and_names_bad_ids(tmp_path):
    from modgap.store import import_store

    src = tmp_path / "npy"
    src.mkdir()
    x = np.ones((4, 3), dtype=np.float32)
    x[1] = 1e6  # beyond float16: Inf once stored
    x[2] = 1e-9  # below float16's smallest value: all zeros once stored
    np.save(src / "embeddings.npy", x)
    (src / "ids.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(ModgapError, match=r"'b' \(inf\), 'c' \(zero\)"):
        import_store("npy", src, tmp_path / "s16", dtype="float16")
    assert import_store("npy", src, tmp_path / "s32").dim == 3  # in float32 they are fine
    (src / "ids.txt").write_text("a\n\nc\nd\n")
    with pytest.raises(ModgapError, match=r"ids.txt:2: empty id"):
        import_store("npy", src, tmp_path / "o")
    (src / "ids.txt").write_text("a\nb\na\nd\n")
    with pytest.raises(ModgapError, match=r"ids.txt:3: id 'a' already on line 1"):
        import_store("npy", src, tmp_path / "o")
    (src / "ids.txt").write_bytes(b"a\nb\n\xff\xfe\nd\n")
    with pytest.raises(ModgapError, match=r"ids.txt:3: not UTF-8 text \(byte 4"):
        import_store("npy", src, tmp_path / "o")
    pq.write_table(pa.table({"id": ["a", None], "embedding": [[1.0, 2.0], [3.0, 4.0]]}), tmp_path / "n.parquet")
    with pytest.raises(ModgapError, match=r"n.parquet: row 2 has no id"):
        import_store("parquet", tmp_path / "n.parquet", tmp_path / "o")
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": [[1.0, 2.0], None]}), tmp_path / "e.parquet")
    with pytest.raises(ModgapError, match=r"e.parquet: row 2 has no embedding \(null\)"):
        import_store("parquet", tmp_path / "e.parquet", tmp_path / "o")
    pq.write_table(pa.table({"id": ["a", "a"], "embedding": [[1.0, 2.0], [3.0, 4.0]]}), tmp_path / "d.parquet")
    with pytest.raises(ModgapError, match=r"d.parquet rows 1..: duplicate id\(s\): 'a'"):
        import_store("parquet", tmp_path / "d.parquet", tmp_path / "o")
    assert not (tmp_path / "o").exists() and not (tmp_path / "s16").exists() and _no_hidden_temp(tmp_path)


# -- 9, 13. resume: changed inputs refused; a damaged checkpoint falls back to the one before ----------------
def test_resume_refuses_an_edited_data_file_and_skips_a_damaged_checkpoint(tmp_path, lm_world):
    from modgap.mllm.config import TrainConfig
    from modgap.mllm.train import train

    data = tmp_path / "caps.jsonl"
    data.write_bytes(lm_world["data"].read_bytes())

    def cfg(**kw):
        return TrainConfig(out=str(tmp_path / "r"), llm=str(lm_world["llm"]), data=[str(data)],
                           embeddings=[str(lm_world["good"])], report_to="none", batch_size=8, max_steps=6,
                           save_every=2, keep_checkpoints=3, **kw)  # fmt: skip

    train(cfg(stop_after=4))
    (tmp_path / "r" / "checkpoints" / "step-4" / "model.safetensors").write_bytes(b"\x10\x00")  # cut short
    data.write_text(data.read_text().replace("red", "blue", 1))
    with pytest.raises(ModgapError, match=r"the content of .*caps.jsonl changed since the run began"):
        train(cfg(resume=True))
    data.write_bytes(lm_world["data"].read_bytes())
    resumed = train(cfg(resume=True))  # step-4 is damaged: continues from step-2
    assert resumed.steps == 6 and len(resumed.losses) == 4
    for checkpoint in (tmp_path / "r" / "checkpoints").glob("step-*"):
        (checkpoint / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModgapError, match=r"no intact checkpoint .*model.safetensors"):
        train(cfg(resume=True))


# -- 10. a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here ({proc.stderr.decode().strip()})")
    yield mount
    # Another process glancing into the mount (an xdist neighbour walking tmp dirs) makes umount "busy" for a
    # moment: retry, then detach it lazily (it is freed when the last user leaves).
    for _ in range(20):
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, rng, tiny_disk):
    make_store(tmp_path / "s", rng.normal(size=(3000, 256)).astype(np.float32))  # 3 MB of float32
    for fmt in ("npy", "parquet", "revision-pkl"):
        _fails("store", "export", "--format", fmt, tmp_path / "s", tiny_disk / "out", match="no space left on")
    np.save(tmp_path / "x.npy", rng.normal(size=(3000, 256)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("".join(f"r{i}\n" for i in range(3000)))
    _fails("store", "import", "--format", "npy", tmp_path / "x.npy", tiny_disk / "imp", match="no space left on")
    assert list(tiny_disk.iterdir()) == []


# -- 11, 15, 21. bytes, directories, parse errors -----------------------------------------------------------
def test_non_utf8_inputs_and_directories_as_files_are_one_line(tmp_path, rng):
    bad = tmp_path / "texts.jsonl"
    bad.write_bytes(b'{"id": "a", "caption": "ok"}\n{"id": "b", "caption": "caf\xe9"}\n')
    _fails("embed", "--encoder", "builtin:tiny-clip", "--modality", "text", "--data", bad, "--text-column",
           "caption", "--out-text", tmp_path / "t", match="texts.jsonl:2: not UTF-8 text (byte")  # fmt: skip
    seeds = tmp_path / "seeds.csv"
    seeds.write_bytes(b"id,text\ns1,a red shape\ns2,\x80bad\n")
    _fails("synth", "captions", "--llm", "builtin:tiny-lm", "--seeds", seeds, "--out", tmp_path / "c.jsonl",
           match="seeds.csv:3: not UTF-8 text")  # fmt: skip
    t, i = gapped_pair(rng, 40, 40, 8)
    make_store(tmp_path / "ts", t, modality="text")
    make_store(tmp_path / "is", i, modality="image")
    (tmp_path / "adir").mkdir()
    _fails("gap", tmp_path / "ts", tmp_path / "is", "--json", tmp_path / "adir", match="is a directory")
    assert _no_hidden_temp(tmp_path) and list((tmp_path / "adir").iterdir()) == []
    # An aligner fitted at another width: the check `align apply` makes, now in `gap` too.
    make_store(tmp_path / "w", rng.normal(size=(40, 5)).astype(np.float32))
    run_cli("align", "fit", "--source", tmp_path / "w", "--target", tmp_path / "w", "--out", tmp_path / "al5")
    _fails("gap", tmp_path / "ts", tmp_path / "is", "--aligner", tmp_path / "al5", match="fitted on D=5")


# -- 12, 20. broken servers ---------------------------------------------------------------------------------
class _Broken(BaseHTTPRequestHandler):
    body = b"not json"

    def do_GET(self):  # models.list: answered, so the server counts as reachable
        self._send(200, b'{"object": "list", "data": []}')

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(self.server.status, self.server.body)

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (200, b"<html>proxy error</html>", "not a chat completion"),
        (200, b'{"id": "x", "object": "chat.completion"}', "has no choices"),
        (404, b'{"error": {"message": "model not found"}}', "HTTP 404"),
    ],
)
def test_a_server_answering_garbage_or_refusing_everything_is_a_clear_stop(tmp_path, status, body, match):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    server.status, server.body = status, body
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seeds = tmp_path / "seeds.jsonl"
        seeds.write_text("".join(json.dumps({"id": f"s{i}", "text": f"a red shape {i}"}) + "\n" for i in range(3)))
        line = _fails("synth", "captions", "--llm", "openai:m", "--base-url", f"http://127.0.0.1:{server.server_port}/v1",
                      "--seeds", seeds, "--out", tmp_path / "c.jsonl", "--request-attempts", "2",
                      match="requests failed the same way")  # fmt: skip
        assert match in line
        assert not (tmp_path / "c.jsonl").exists() and _no_hidden_temp(tmp_path)
    finally:
        server.shutdown()


def test_loose_values_are_refused(tmp_path, rng, lm_world):
    _fails(*_train_args(lm_world, tmp_path / "r", None, "--max-steps", "-5"), match="--max-steps must be at least 1")
    assert not (tmp_path / "r").exists()
    make_store(tmp_path / "i", rng.normal(size=(3, 4)).astype(np.float32), prefix="i")
    make_store(tmp_path / "t", rng.normal(size=(3, 4)).astype(np.float32), prefix="t")
    (tmp_path / "pairs.csv").write_text("text_id,image_id\nt0,i0\n")
    _fails("eval", "retrieval", "--image", tmp_path / "i", "--text", tmp_path / "t", "--pairs", tmp_path / "pairs.csv",
           "--k", "0", match="--k must be at least 1")  # fmt: skip
    (tmp_path / "q.jsonl").write_text(
        "".join(json.dumps({"id": "q1", "image": "i0", "question": "what ?", "answer": "x"}) + "\n" for _ in range(2))
    )
    run_cli(*_train_args(lm_world, tmp_path / "m", None, "--max-steps", "1"))
    make_store(tmp_path / "v", rng.normal(size=(3, 8)).astype(np.float32), prefix="i", modality="image")
    _fails("eval", "vqa", "--model", tmp_path / "m", "--data", tmp_path / "q.jsonl", "--embeddings", tmp_path / "v",
           match="row 2: question id 'q1' already on row 1")  # fmt: skip


def test_stale_temporaries_of_killed_runs_are_removed_by_the_next_success(tmp_path, rng):
    t, i = gapped_pair(rng, 40, 40, 8)
    make_store(tmp_path / "t", t, modality="text")
    make_store(tmp_path / "i", i, modality="image")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from modgap.files import _HOST

    stale = tmp_path / f".tmp-out-{_HOST}-{dead.stdout.strip()}-abcdef12"
    stale.mkdir()
    (stale / "part-00000.arrow").write_bytes(b"x" * 1000)
    alive = tmp_path / f".tmp-out-{_HOST}-{os.getppid()}-abcdef12"  # a writer still running: never touched
    alive.mkdir()
    elsewhere = tmp_path / f".tmp-out-otherhost-{dead.stdout.strip()}-abcdef12"  # another machine's writer
    elsewhere.mkdir()
    run_cli("align", "run", "--source", tmp_path / "t", "--target", tmp_path / "i", "--out", tmp_path / "out")
    assert not stale.exists() and alive.exists() and elsewhere.exists()


def test_timeout_help_states_the_worst_case():
    proc = run_cli("synth", "captions", "--help")
    assert "Worst case" in proc.stdout and "connecting gives up after 10 s" in " ".join(proc.stdout.split())


def test_compositional_names_the_bad_caption_and_its_store(tmp_path, rng):
    from modgap.eval.compositional import Triple, compositional_accuracy

    make_store(tmp_path / "i", rng.normal(size=(2, 4)).astype(np.float32), prefix="i")
    captions = rng.normal(size=(4, 4)).astype(np.float32)
    captions[3] = np.nan
    make_store(tmp_path / "t", captions, prefix="c")
    triples = [Triple("i0", "c0", "c1", "all"), Triple("i1", "c2", "c3", "all")]
    with pytest.raises(ModgapError, match=r"/t: 1 unusable vector\(s\) .*'c3' \(nan\)"):
        compositional_accuracy(tmp_path / "i", tmp_path / "t", triples)
