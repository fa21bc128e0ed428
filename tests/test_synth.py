"""Stage 1 of data synthesis against a real OpenAI-compatible server (`transformers serve` on the built-in LM),
and the local backend."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli
from modgap.errors import ModgapError
from modgap.hub import resolve
from modgap.synth.captions import CaptionSettings, read_seeds, synth_captions
from modgap.synth.llm import OpenAIChat, Sampling, load_llm_backend

LM = resolve("builtin:tiny-lm")
SEEDS = ["a red shape", "something at the top", "a big blue thing", "a small star", "a green circle on the left",
         "a white cross", "a purple square at the bottom", "a yellow triangle", "a large shape in the middle",
         "a small red star on the right"]  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", LM, "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("transformers serve did not come up")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


def replies_in(cache: Path, at_least: int, timeout: float = 120) -> int:
    """Wait until the run's reply cache holds ``at_least`` replies; how many it holds then."""
    deadline, done = time.time() + timeout, 0
    while time.time() < deadline and done < at_least:
        time.sleep(0.1)
        if cache.exists():
            try:
                with sqlite3.connect(cache) as db:
                    done = db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    return done


def write_seeds(path: Path, seeds: list[str] = SEEDS) -> Path:
    path.write_text("".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(seeds)))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


SETTINGS = dict(per_seed=2, min_words=3, sampling=Sampling(temperature=1.0, max_tokens=24, seed=5))


def test_captions_from_a_real_server_and_a_rerun_served_from_the_cache(tmp_path, server):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    backend = OpenAIChat(LM, [server])
    summary = synth_captions(backend, seeds, tmp_path / "captions.jsonl", CaptionSettings(**SETTINGS))
    rows, failures = lines(tmp_path / "captions.jsonl"), lines(tmp_path / "captions.failures.jsonl")
    assert len(rows) + len(failures) == len(SEEDS) * 2 and summary.requested == 20 and summary.cached == 0
    ids = [r["id"] for r in rows] + [f["id"] for f in failures]
    assert sorted(ids) == sorted(f"s{i}-{k}" for i in range(len(SEEDS)) for k in range(2))
    assert rows and all(r["seed"] == SEEDS[int(r["seed_id"][1:])] for r in rows)
    assert all(f["reason"] in ("empty", "truncated", "too_short", "duplicate", "near_duplicate") for f in failures)
    meta = json.loads((tmp_path / "captions.meta.json").read_text())
    assert meta["model"] == f"openai:{LM}" and meta["sampling"]["seed"] == 5 and len(meta["prompt_sha256"]) == 64
    assert meta["summary"]["rows"] == len(rows) and sum(meta["summary"]["filtered"].values()) == len(failures)
    # The same command again: every reply from the cache, the same output.
    again = synth_captions(OpenAIChat(LM, [server]), seeds, tmp_path / "captions.jsonl", CaptionSettings(**SETTINGS))
    assert (again.cached, again.requested) == (20, 0)
    assert lines(tmp_path / "captions.jsonl") == rows


def test_a_killed_run_resumes_sending_only_the_missing_requests(tmp_path, server):
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS * 3)
    common = ["synth", "captions", "--llm", f"openai:{LM}", "--base-url", server, "--seeds", seeds,
              "--per-seed", "2", "--min-words", "3", "--temperature", "1.0", "--max-tokens", "24",
              "--seed", "5"]  # fmt: skip
    run_cli(*common, "--out", tmp_path / "straight.jsonl", "--concurrency", "4")
    out = tmp_path / "resumed.jsonl"
    cmd = [sys.executable, "-m", "modgap.cli.main", *map(str, common), "--out", str(out), "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = replies_in(tmp_path / "resumed.jsonl.cache.sqlite", at_least=15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 15 <= done < 60 and not out.exists()  # killed about a quarter in: no output visible
    resumed = run_cli(*common, "--out", out, "--concurrency", "4")
    cached_before = done
    assert "from the cache" in resumed.stdout
    meta = json.loads((tmp_path / "resumed.meta.json").read_text())["summary"]
    assert meta["cached"] >= cached_before and meta["cached"] + meta["requested"] == 60
    assert lines(out) == lines(tmp_path / "straight.jsonl")  # the same rows as the uninterrupted run
    assert lines(tmp_path / "resumed.failures.jsonl") == lines(tmp_path / "straight.failures.jsonl")


def test_server_unreachable_and_server_killed_mid_run(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS * 4)
    port = free_port()
    started = time.time()
    with pytest.raises(ModgapError, match="cannot reach the LLM server"):
        synth_captions(OpenAIChat(LM, [f"http://127.0.0.1:{port}/v1"]), seeds, tmp_path / "c.jsonl")
    assert time.time() - started < 15 and not (tmp_path / "c.jsonl").exists()

    proc = start_server(port)
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "modgap.cli.main", "synth", "captions", "--llm", f"openai:{LM}", "--base-url", url,
           "--seeds", str(seeds), "--per-seed", "3", "--out", str(tmp_path / "c.jsonl"), "--concurrency", "1",
           "--max-attempts", "3", "--max-tokens", "24", "--min-words", "3"]  # fmt: skip
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    replies_in(tmp_path / "c.jsonl.cache.sqlite", at_least=10)
    proc.kill()
    proc.wait()
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 2 and "rerun the same command to resume" in stderr, stderr
    assert not (tmp_path / "c.jsonl").exists()
    proc = start_server(port)
    try:
        resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert resumed.returncode == 0, resumed.stderr
    meta = json.loads((tmp_path / "c.meta.json").read_text())["summary"]
    assert meta["cached"] > 0 and meta["cached"] + meta["requested"] == 120
    assert meta["rows"] + meta["failures"] == 120


def test_seed_files_with_problems_get_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ModgapError, match="no seeds"):
        read_seeds(tmp_path / "empty.jsonl")
    (tmp_path / "noid.csv").write_text("text\na red shape\n")
    with pytest.raises(ModgapError, match="row 1 has no 'id' column"):
        read_seeds(tmp_path / "noid.csv")
    (tmp_path / "dup.jsonl").write_text(
        '{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n'
    )
    with pytest.raises(ModgapError, match="rows 1 and 3 share the id 'a'"):
        read_seeds(tmp_path / "dup.jsonl")
    refused = run_cli("synth", "captions", "--llm", "builtin:tiny-lm", "--seeds", tmp_path / "dup.jsonl",
                      "--out", tmp_path / "o.jsonl", check=False)  # fmt: skip
    assert refused.returncode == 2 and "share the id" in refused.stderr and not (tmp_path / "o.jsonl").exists()


def test_the_local_backend_batches_and_shards_concatenate(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    backend = load_llm_backend("builtin:tiny-lm", batch_size=4)
    settings = CaptionSettings(per_seed=1, min_words=3, dedupe=False, sampling=Sampling(temperature=0.0, max_tokens=24))
    whole = synth_captions(backend, seeds, tmp_path / "whole.jsonl", settings)
    assert whole.rows + whole.failures == len(SEEDS)
    parts = []
    for i in range(2):
        synth_captions(backend, seeds, tmp_path / f"part{i}.jsonl", settings, shard=(i, 2))
        parts += lines(tmp_path / f"part{i}.jsonl")
    # Greedy decoding: each reply depends on its prompt only, so two shards give the rows of one run
    # (duplicates are found within a shard only, so they are kept here).
    assert [r["id"] for r in parts] == [r["id"] for r in lines(tmp_path / "whole.jsonl")]
    assert parts == lines(tmp_path / "whole.jsonl")
