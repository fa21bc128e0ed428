"""Data synthesis against a real OpenAI-compatible server (`transformers serve` on the built-in LM) and the local
backend: stage 1 captions, stage 2 instruction conversations (with an LM trained here to write JSON), and
`modgap train sft` on stage 2's rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli
from modgap.errors import ModgapError
from modgap.hub import resolve
from modgap.synth.captions import CaptionSettings, read_seeds, synth_captions
from modgap.synth.instructions import InstructionSettings, json_schema, parse_conversation, synth_instructions
from modgap.synth.llm import OpenAIChat, load_llm_backend
from modgap.world.lm import train_causal_lm
from modgap.world.scene import PLACE, caption, make_scenes, parse_caption
from modgap.world.tiny import save_tiny_llm

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


SETTINGS = dict(per_seed=2, min_words=3, temperature=1.0, max_tokens=24, seed=5)


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


def test_the_built_in_lm_samples_and_writes_world_captions_from_the_prompt_it_declares(tmp_path, server):
    """No prompt given: `synth captions` uses the template `builtin:tiny-lm` declares (its modgap_world.json) and
    says so in the meta file; the model's generation config samples, so four samples of a seed differ and
    read as world captions (the shipped prompt made it write junk, and greedy decoding duplicates)."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    run_cli("synth", "captions", "--llm", f"openai:{LM}", "--base-url", server, "--seeds", seeds, "--per-seed", 4,
            "--temperature", "1.0", "--max-tokens", 32, "--keep-duplicates", "--out", tmp_path / "c.jsonl")  # fmt: skip
    meta = json.loads((tmp_path / "c.meta.json").read_text())
    assert meta["prompt_source"] == f"declared by {LM} (modgap_world.json, prompts.captions)"
    rows = lines(tmp_path / "c.jsonl")
    assert len(rows) >= 36  # of 40
    parsed = [parse_caption(r["caption"]) for r in rows]
    assert sum(p["shape"] is not None and p["colour"] is not None for p in parsed) >= 0.9 * len(rows)
    by_seed: dict[str, set[str]] = {}
    for r in rows:
        by_seed.setdefault(r["seed_id"], set()).add(r["caption"])
    assert sum(len(c) for c in by_seed.values()) >= 0.8 * len(rows)  # sampled: few repeats within a seed

    # A prompt given wins, and the meta file says where it came from.
    (tmp_path / "p.txt").write_text("{seed} : write a full caption .")
    run_cli("synth", "captions", "--llm", f"openai:{LM}", "--base-url", server, "--seeds", seeds, "--per-seed", 1,
            "--prompt-file", tmp_path / "p.txt", "--out", tmp_path / "d.jsonl")  # fmt: skip
    assert json.loads((tmp_path / "d.meta.json").read_text())["prompt_source"] == f"prompt file {tmp_path / 'p.txt'}"


def test_a_killed_run_resumes_sending_only_the_missing_requests(tmp_path, server):
    seeds = write_seeds(tmp_path / "seeds.jsonl", SEEDS * 3)
    # Greedy: `transformers serve` does not reproduce a sampled reply from its request's seed (measured: the
    # same seeds, other captions on the next run), so only greedy replies can show a resumed run equal to a
    # straight one; servers with per-request seeds (vLLM) reproduce sampled ones too.
    common = ["synth", "captions", "--llm", f"openai:{LM}", "--base-url", server, "--seeds", seeds,
              "--per-seed", "2", "--min-words", "3", "--temperature", "0", "--max-tokens", "24", "--seed", "5",
              "--keep-duplicates"]  # fmt: skip
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
           "--request-attempts", "3", "--max-tokens", "24", "--min-words", "3"]  # fmt: skip
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
    settings = CaptionSettings(per_seed=1, min_words=3, dedupe=False, temperature=0.0, max_tokens=24)
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
    # Windows of 3 seeds (replies gathered, judged and written 3 seeds at a time) give the one-window output.
    windowed = CaptionSettings(**{**settings.__dict__, "window": 3})
    again = synth_captions(backend, seeds, tmp_path / "windowed.jsonl", windowed)
    assert lines(tmp_path / "windowed.jsonl") == lines(tmp_path / "whole.jsonl") and again.rows == whole.rows
    texts = [r["caption"] for r in lines(tmp_path / "whole.jsonl")]
    for n in (1, 2):  # distinct-n counted as rows arrive = over all rows at once
        grams = [tuple(t.lower().split()[i : i + n]) for t in texts for i in range(len(t.split()) - n + 1)]
        assert whole.distinct[f"distinct-{n}"] == pytest.approx(len(set(grams)) / len(grams))


# -- stage 2 -----------------------------------------------------------------------------------------------
JSON_PIECES = ['{"turns": [', '{"question": "', '", "answer": "', '"}, ', '"}]}']
QA_PROMPT = "questions about : {caption}"
EXPAND_PROMPT = "expand : {seed}"


def world_conversation(scene) -> str:
    m = scene.main
    turns = [("what colour is it ?", f"{m.colour} ."), ("what shape is it ?", f"it is a {m.shape} ."),
             ("where is it ?", f"{PLACE[m.position]} .")]  # fmt: skip
    return '{"turns": [' + '"}, '.join('{"question": "' + q + '", "answer": "' + a for q, a in turns) + '"}]}'


def sparse_seed(scene, k: int) -> str:
    m = scene.main
    return [f"a {m.colour} shape", f"something {PLACE[m.position]}", f"a {m.size} thing", f"a {m.shape}"][k % 4]


@pytest.fixture(scope="module")
def json_lm(tmp_path_factory):
    """A tiny LM trained here (seconds) for both stages: EXPAND_PROMPT on a sparse seed gives a full world
    caption, QA_PROMPT on a caption gives three question/answer turns as JSON, the pieces of JSON syntax being
    tokens of its word-level tokenizer."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("json_lm")
    scenes = make_scenes(600, 0, "lm")
    captions = [caption(s) for s in scenes]
    words = [*captions, QA_PROMPT, EXPAND_PROMPT, "what colour shape where is it ? something thing"]
    save_tiny_llm(root / "init", words, hidden=64, layers=2, phrases=JSON_PIECES)
    tok = AutoTokenizer.from_pretrained(root / "init")

    def chat(user: str, reply: str) -> str:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return tok.apply_chat_template(messages, tokenize=False)

    texts = []
    for k, (c, s) in enumerate(zip(captions, scenes, strict=True)):
        texts.append(chat(QA_PROMPT.replace("{caption}", c), world_conversation(s)))
        texts.append(chat(EXPAND_PROMPT.replace("{seed}", sparse_seed(s, k)), c))
    train_causal_lm(root / "init", texts, root / "lm", steps=300, batch_size=16, lr=3e-3)
    return root / "lm"


def write_captions(path: Path, n: int = 12) -> Path:
    rows = [{"id": f"c{i}", "caption": caption(s)} for i, s in enumerate(make_scenes(n, 1, "test"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replies_are_parsed_and_validated_with_reasons_the_llm_can_act_on():
    ok, _, _ = parse_conversation('Sure!\n```json\n{"turns": [{"question": " Q? ", "answer": "A"}]}\n```', 1, 3)
    assert ok is not None and (ok[0].question, ok[0].answer) == ("Q?", "A")
    ok, _, _ = parse_conversation('[{"question": "q1", "answer": "a"}, {"question": "q2", "answer": "b"}]', 2, 2)
    assert ok is not None and len(ok) == 2  # a bare list of turns is accepted
    cases = {
        "a red circle at the top": ("not_json", "holds no JSON"),
        '{"turns": [{"question": "q", "answer": "a"}': ("not_json", "not valid JSON"),
        '{"turns": [{"question": "", "answer": "a"}]}': ("invalid", "turns.0.question"),
        '{"turns": [{"question": "q", "answer": "a", "note": 1}]}': ("invalid", "turns.0.note"),
        '{"conversation": []}': ("invalid", "turns: Field required"),
        '{"turns": [{"question": "q", "answer": "a"}]}': ("invalid", "it has 1 turns; expected 2 to 3"),
        '{"turns": [{"question": "Is it red?", "answer": "a"}, {"question": "is it  RED?", "answer": "b"}]}': (
            "invalid", "turns 1 and 2 ask the same question"),
    }  # fmt: skip
    for reply, (reason, message) in cases.items():
        turns, got_reason, got_message = parse_conversation(reply, 2, 3)
        assert turns is None and got_reason == reason and message in got_message, (reply, got_message)
    schema = json_schema(3, 8)
    assert schema["properties"]["turns"]["minItems"] == 3 and schema["properties"]["turns"]["maxItems"] == 8
    assert schema["additionalProperties"] is False


def test_instructions_from_a_local_lm_are_validated_and_invalid_ones_retried_with_feedback(tmp_path, json_lm):
    captions = write_captions(tmp_path / "captions.jsonl")
    settings = InstructionSettings(min_turns=2, max_turns=4, temperature=0.0, max_tokens=60)
    backend = load_llm_backend(f"hf:{json_lm}", batch_size=8)
    summary = synth_instructions(backend, captions, tmp_path / "instruct.jsonl", settings, prompt=QA_PROMPT)
    rows = lines(tmp_path / "instruct.jsonl")
    assert summary.rows == len(rows) == 12 and summary.failures == 0 and summary.attempts == {"1": 12}
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(12)] and all(r["image"] == r["id"] for r in rows)
    first = rows[0]["conversations"]
    assert first[0] == {"from": "human", "value": "<image>\nwhat colour is it?"} and first[1]["from"] == "gpt"
    assert [t["from"] for t in first] == ["human", "gpt"] * 3
    meta = json.loads((tmp_path / "instruct.meta.json").read_text())
    assert meta["summary"]["rows"] == 12 and meta["settings"]["min_turns"] == 2
    assert lines(tmp_path / "instruct.failures.jsonl") == []

    # Replies that stay invalid: each caption is asked max_attempts times, the error fed back each time.
    strict = InstructionSettings(min_turns=4, max_turns=6, max_attempts=3,
                                 temperature=0.0, max_tokens=60)  # fmt: skip
    summary = synth_instructions(backend, captions, tmp_path / "strict.jsonl", strict, prompt=QA_PROMPT)
    failures = lines(tmp_path / "strict.failures.jsonl")
    assert summary.rows == 0 and summary.requested == 36 and len(failures) == 12
    assert all(f["attempts"] == 3 and f["reason"].split(":")[0] in ("invalid", "not_json") for f in failures)
    # The third request carried two feedback turns, and the reply is not the first one (three turns) again.
    assert all(f["reply"].startswith('{"turns": [') and f["reply"].count('"question"') != 3 for f in failures)
    again = synth_instructions(backend, captions, tmp_path / "strict.jsonl", strict, prompt=QA_PROMPT)
    assert (again.cached, again.requested) == (36, 0)  # the feedback turns are part of each request's key
    windowed = InstructionSettings(**{**strict.__dict__, "window": 5})
    synth_instructions(backend, captions, tmp_path / "windowed.jsonl", windowed, prompt=QA_PROMPT)
    assert lines(tmp_path / "windowed.failures.jsonl") == failures  # windows of 5 captions: the same result


def test_instructions_through_a_real_server_list_non_json_replies_and_resume(tmp_path, server):
    captions = write_captions(tmp_path / "captions.jsonl", 6)
    settings = InstructionSettings(min_turns=2, max_turns=3, max_attempts=2,
                                   temperature=1.0, max_tokens=16, seed=3)  # fmt: skip
    summary = synth_instructions(OpenAIChat(LM, [server]), captions, tmp_path / "i.jsonl", settings)
    failures = lines(tmp_path / "i.failures.jsonl")
    # The built-in LM writes captions, not JSON: every caption fails after two requests, each listed.
    assert summary.rows == 0 and summary.requested == 12 and [f["id"] for f in failures] == [f"c{i}" for i in range(6)]
    assert all(f["attempts"] == 2 and f["reason"].split(":")[0] in ("not_json", "truncated") for f in failures)
    assert json.loads((tmp_path / "i.meta.json").read_text())["summary"]["structured_output"] == "sent"
    again = synth_instructions(OpenAIChat(LM, [server]), captions, tmp_path / "i.jsonl", settings)
    assert (again.cached, again.requested) == (12, 0) and lines(tmp_path / "i.failures.jsonl") == failures
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "caption": "x"}\n{"id": "b"}\n')
    refused = run_cli("synth", "instructions", "--llm", f"openai:{LM}", "--base-url", server, "--captions", bad,
                      "--out", tmp_path / "o.jsonl", check=False)  # fmt: skip
    assert refused.returncode == 2 and "row 2 (id 'b') has no text in 'caption'" in refused.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_synth_run_makes_captions_conversations_and_the_transferred_store_and_skips_what_is_done(tmp_path, json_lm):
    import numpy as np
    import yaml

    from modgap.store.store import EmbeddingStore

    (tmp_path / "seeds.jsonl").write_text("".join(
        json.dumps({"id": f"s{i}", "text": sparse_seed(s, i)}) + "\n" for i, s in enumerate(make_scenes(16, 2, "x"))
    ))  # fmt: skip
    (tmp_path / "expand.txt").write_text(EXPAND_PROMPT)
    (tmp_path / "qa.txt").write_text(QA_PROMPT)
    config = {
        "llm": {"model": f"hf:{json_lm}", "batch_size": 8},
        "seeds": {"path": str(tmp_path / "seeds.jsonl")},
        "captions": {"per_seed": 2, "temperature": 1.0, "max_tokens": 24, "min_words": 3,
                     "prompt_file": str(tmp_path / "expand.txt")},
        "instructions": {"min_turns": 2, "max_turns": 4, "temperature": 0.0, "max_tokens": 60,
                         "prompt_file": str(tmp_path / "qa.txt")},
        "transfer": {"encoder": "builtin:tiny-clip"},
        "seed": 7,
    }  # fmt: skip
    (tmp_path / "unicorn.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "unicorn"
    first = run_cli("synth", "run", "--config", tmp_path / "unicorn.yaml", out)
    captions, conversations = lines(out / "captions.jsonl"), lines(out / "instructions.jsonl")
    assert len(captions) + len(lines(out / "captions.failures.jsonl")) == 32 and len(captions) >= 8
    assert len(conversations) + len(lines(out / "instructions.failures.jsonl")) == len(captions)
    assert {c["id"] for c in conversations} <= {c["id"] for c in captions} and conversations
    assert "modgap train pretrain" in first.stdout and "modgap train sft" in first.stdout
    # Stage 3 is Unicorn's mean shift: each caption's unit text embedding minus the mean of them all.
    text, moved = EmbeddingStore.open(out / "stores" / "text"), EmbeddingStore.open(out / "stores" / "transferred")
    ids = [c["id"] for c in captions]
    x = text.get(ids).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(moved.get(ids), x - x.mean(0), atol=2e-3)  # float16 stores
    assert moved.manifest.extra["aligner"]["method"] == "mean-shift"
    # The conversations are what `modgap train sft` reads: unchanged, joined by id to the transferred store.
    proc = run_cli("train", "sft", "--llm", "builtin:tiny-lm", "--data", out / "instructions.jsonl",
                   "--embeddings", out / "stores" / "transferred", "--max-steps", 2, "--batch-size", 4,
                   "--report-to", "none", "--out", tmp_path / "sft")  # fmt: skip
    assert f"{len(conversations)} samples from {len(conversations)} rows" in proc.stdout + proc.stderr
    assert (tmp_path / "sft" / "model").is_dir()

    again = run_cli("synth", "run", "--config", tmp_path / "unicorn.yaml", out)
    assert again.stdout.count("is finished") == 4 and lines(out / "captions.jsonl") == captions
    config["captions"]["per_seed"] = 3
    (tmp_path / "unicorn.yaml").write_text(yaml.safe_dump(config))
    changed = run_cli("synth", "run", "--config", tmp_path / "unicorn.yaml", out, check=False)
    assert changed.returncode == 2 and "use another output directory" in changed.stderr
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**config, "captions": {"per_seeds": 2}}))
    typo = run_cli("synth", "run", "--config", tmp_path / "typo.yaml", tmp_path / "other", check=False)
    assert typo.returncode == 2 and "unknown settings ['per_seeds']" in typo.stderr
    assert not (tmp_path / "other").exists()
    # `instructions: null` skips stage 2: captions for pretraining only, and only the pretraining command follows.
    (tmp_path / "captions-only.yaml").write_text(yaml.safe_dump({**config, "instructions": None}))
    only = run_cli("synth", "run", "--config", tmp_path / "captions-only.yaml", tmp_path / "captions-only")
    assert "stage 2: skipped" in only.stdout and "modgap train sft" not in only.stdout
    made = tmp_path / "captions-only"
    assert lines(made / "captions.jsonl") and not (made / "instructions.jsonl").exists()
    assert (made / "stores" / "transferred").is_dir()


class RefusingProxy:
    """A real HTTP hop in front of the real server that behaves like servers without structured output: a
    request carrying ``response_format`` gets HTTP 400, and the first chat request gets 429 with Retry-After.
    Everything else is forwarded unchanged. Records (arrival time, body, status) per request."""

    def __init__(self, upstream: str, retry_after: float):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.seen: list[tuple[float, dict, int]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def forward(self, request: urllib.request.Request | str) -> None:
                try:
                    with urllib.request.urlopen(request, timeout=120) as r:
                        self.answer(r.status, r.read(), {"Content-Type": "application/json"})
                except urllib.error.HTTPError as e:  # the server's own error answer, passed on
                    self.answer(e.code, e.read(), {"Content-Type": "application/json"})

            def do_GET(self):
                self.forward(upstream.removesuffix("/v1") + self.path)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                with proxy.lock:
                    first = not proxy.seen
                    status = 429 if first else 400 if "response_format" in body else 200
                    proxy.seen.append((time.monotonic(), body, status))
                if status != 200:
                    error = {"error": {"message": "response_format is not supported" if status == 400 else "slow down",
                                       "type": "invalid_request_error", "code": status}}  # fmt: skip
                    headers = {
                        "Content-Type": "application/json",
                        **({"Retry-After": str(retry_after)} if first else {}),
                    }
                    self.answer(status, json.dumps(error).encode(), headers)
                    return
                request = urllib.request.Request(upstream.removesuffix("/v1") + self.path, data=raw,
                                                 headers={"Content-Type": "application/json"})  # fmt: skip
                self.forward(request)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_server_that_refuses_structured_output_and_rate_limits_is_handled(tmp_path, server):
    captions = write_captions(tmp_path / "captions.jsonl", 4)
    settings = InstructionSettings(min_turns=2, max_turns=3, max_attempts=2, concurrency=1,
                                   temperature=1.0, max_tokens=16, seed=3)  # fmt: skip
    proxy = RefusingProxy(server, retry_after=1.0)
    try:
        backend = OpenAIChat(LM, [proxy.url])
        summary = synth_instructions(backend, captions, tmp_path / "i.jsonl", settings)
    finally:
        proxy.close()
    statuses = [status for _, _, status in proxy.seen]
    # 429 (retried after Retry-After), 400 (the schema refused: asked again without it, not a failed attempt),
    # then every request of the run without response_format: 4 captions x 2 attempts reach the LLM.
    assert statuses[:2] == [429, 400] and statuses[2:] == [200] * 8, statuses
    assert all("response_format" in body for _, body, _ in proxy.seen[:2])
    assert not any("response_format" in body for _, body, _ in proxy.seen[2:])
    assert proxy.seen[1][1]["messages"] == proxy.seen[0][1]["messages"]  # the same request, resent
    assert proxy.seen[1][0] - proxy.seen[0][0] >= 0.95  # Retry-After: 1 honoured
    assert backend.retries == 1 and summary.requested == 8
    meta = json.loads((tmp_path / "i.meta.json").read_text())["summary"]["structured_output"]
    assert meta.startswith("refused by the server (HTTP 400") and "response_format is not supported" in meta
    failures = lines(tmp_path / "i.failures.jsonl")  # the built-in LM writes captions, not JSON
    assert len(failures) == 4 and all(f["attempts"] == 2 for f in failures)


def test_stage_defaults_are_written_once(tmp_path):
    """The library, the commands' options and `synth run`'s config sections agree (they once differed: the
    instruction temperature was 0.7 in the CLI and config but 0.8 in the library): the sections are the
    settings classes and the options are generated from them."""
    import dataclasses

    import typer

    from modgap.cli.synth import app
    from modgap.synth.pipeline import load_unicorn_config
    from modgap.synth.settings import LLMSettings

    command = typer.main.get_command(app)
    options = {
        name: {p.name: p.default for p in command.commands[name].params} for name in ("captions", "instructions")
    }
    config = tmp_path / "unicorn.yaml"
    config.write_text("llm: {model: builtin:tiny-lm}\nseeds: {path: s.jsonl}\ntransfer: {encoder: builtin:tiny-clip}\n")
    loaded = load_unicorn_config(config)
    lib_c, lib_i = CaptionSettings(), InstructionSettings()
    assert (loaded.captions, loaded.instructions) == (lib_c, lib_i)
    for lib, cli in ((lib_c, options["captions"]), (lib_i, options["instructions"])):
        sampling = lib.sampling
        assert (cli["temperature"], cli["top_p"], cli["max_tokens"], cli["concurrency"]) == (
            sampling.temperature, sampling.top_p, sampling.max_tokens, lib.concurrency)  # fmt: skip
        for f in dataclasses.fields(lib):
            if f.name not in ("min_turns", "max_turns"):
                assert cli[f.name] == getattr(lib, f.name), f.name
        for f in dataclasses.fields(LLMSettings):
            if f.default is not dataclasses.MISSING:
                assert cli[f.name] == f.default, f.name
    assert lib_i.sampling.temperature == 0.7 and lib_c.sampling.temperature == 0.8
    assert options["instructions"]["turns"] == f"{lib_i.min_turns}-{lib_i.max_turns}"
    assert (options["captions"]["min_words"], options["captions"]["near_duplicate"]) == (
        lib_c.min_words, lib_c.near_duplicate)  # fmt: skip
    config.write_text(config.read_text() + "seed: 7\ninstructions: {seed: 3}\nllm: {model: x, concurrency: 4}\n")
    with pytest.raises(ModgapError, match=r"concurrency is set per stage"):
        load_unicorn_config(config)
