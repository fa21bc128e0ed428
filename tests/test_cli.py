"""The command line as a user runs it: real processes, exit codes, one-line errors, no partial output."""

import json
import os
import pickle

import numpy as np

from conftest import gapped_pair, make_store, run_cli, write_revision_pkls
from modgap.store import EmbeddingStore


def _no_temp_left(d):
    return [p.name for p in d.iterdir() if p.name.startswith(".tmp")] == []


def _leaf_commands():
    import typer

    from modgap.cli.main import app

    def walk(cmd, path):
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    return list(walk(typer.main.get_command(app), []))


def example_errors(path: list[str], command, epilog: str) -> list[str]:
    """What is wrong with a command's ``Example:``: absent, naming another command, or a flag it lacks."""
    import shlex

    if "Example: " not in epilog:
        return [f"{' '.join(path)}: no example"]
    words = shlex.split(epilog.split("Example: ", 1)[1].replace("\n", " "))
    # The part of a chained example (`a && b`) that runs this command.
    runs = [i + 1 for i, w in enumerate(words) if w in ("modgap", "modgap.cli.main")]
    start = next((i for i in runs if words[i : i + len(path)] == path), None)
    if start is None:
        return [f"{' '.join(path)}: the example runs {[words[i : i + len(path)] for i in runs] or words[:3]}"]
    if "&&" in words[start:]:
        words = words[: words.index("&&", start)]
    flags = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    return [f"{' '.join(path)}: the example's {w} is not an option"
            for w in words[start + len(path) :] if w.startswith("--") and w.split("=")[0] not in flags]  # fmt: skip


def test_every_command_shows_an_example_that_names_itself_and_existing_options():
    commands = _leaf_commands()
    assert len(commands) >= 26
    errors = [e for path, cmd in commands for e in example_errors(path, cmd, cmd.epilog or "")]
    assert errors == []
    for path, _ in commands[:3]:  # and the example is what `--help` prints
        assert "Example: modgap" in run_cli(*path, "--help").stdout


def test_the_example_check_catches_a_renamed_flag_and_a_wrong_command():
    path, command = next((p, c) for p, c in _leaf_commands() if p == ["align", "fit"])
    assert example_errors(path, command, "Example: modgap align fit --source s --target t --out a") == []
    assert example_errors(path, command, "Example: modgap align fit --src s") == [
        "align fit: the example's --src is not an option"
    ]
    assert "runs" in example_errors(path, command, "Example: modgap align apply --source s")[0]
    assert example_errors(path, command, "no example here") == ["align fit: no example"]


def test_import_info_align_gap_pipeline(tmp_path, rng):
    t, i = gapped_pair(rng, 600, 500, 16)
    write_revision_pkls(tmp_path / "text", t, prefix="t", per_file=250)
    write_revision_pkls(tmp_path / "image", i, prefix="i", per_file=250, key="image_path")
    run_cli("store", "import", "--format", "revision-pkl", tmp_path / "text", tmp_path / "st_t", "--modality", "text")
    run_cli("store", "import", "--format", "revision-pkl", tmp_path / "image", tmp_path / "st_i")
    info = json.loads(run_cli("store", "info", tmp_path / "st_t", "--verify", "--json").stdout)
    assert info["count"] == 600 and info["dim"] == 16 and info["modality"] == "text" and info["verified"]
    assert info["created_by"].startswith("modgap store import")
    run_cli(
        "align",
        "fit",
        "--method",
        "gaussian-ot",
        "-p",
        "shrinkage=0.01",
        "--source",
        tmp_path / "st_t",
        "--target",
        tmp_path / "st_i",
        "--out",
        tmp_path / "al",
    )
    run_cli("align", "apply", "--aligner", tmp_path / "al", "--source", tmp_path / "st_t", "--out", tmp_path / "st_a")
    run_cli(
        "align",
        "run",
        "--method",
        "gaussian-ot",
        "-p",
        "shrinkage=0.01",
        "--source",
        tmp_path / "st_t",
        "--target",
        tmp_path / "st_i",
        "--out",
        tmp_path / "st_b",
        "--save-aligner",
        tmp_path / "al2",
    )
    a, b = EmbeddingStore.open(tmp_path / "st_a"), EmbeddingStore.open(tmp_path / "st_b")
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    (tmp_path / "pairs.csv").write_text("text_id,image_id\n" + "".join(f"t{k},i{k}\n" for k in range(100)))
    proc = run_cli(
        "gap",
        tmp_path / "st_t",
        tmp_path / "st_i",
        "--aligner",
        tmp_path / "al",
        "--pairs",
        tmp_path / "pairs.csv",
        "--json",
        tmp_path / "gap.json",
        "--html",
        tmp_path / "gap.html",
        "--sample",
        "300",
    )
    assert "centroid_distance" in proc.stdout and "after gaussian-ot" in proc.stdout
    report = json.loads((tmp_path / "gap.json").read_text())
    assert report["after"]["centroid_distance"] < report["before"]["centroid_distance"] / 10
    assert set(report["pairs"]) == {"before", "after"} and report["pairs"]["before"]["pairs"] == 100
    html = (tmp_path / "gap.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "centroid_distance" in html


def _fails(*args, match):
    proc = run_cli(*args, check=False)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_bad_inputs_give_one_line_errors_and_no_output(tmp_path, rng):
    t, _ = gapped_pair(rng, 50, 50, 8)
    make_store(tmp_path / "t", t)
    make_store(tmp_path / "i5", rng.normal(size=(20, 5)))
    _fails(
        "align",
        "run",
        "--source",
        tmp_path / "t",
        "--target",
        tmp_path / "i5",
        "--out",
        tmp_path / "o",
        match="dimension mismatch",
    )
    assert not (tmp_path / "o").exists() and _no_temp_left(tmp_path)
    _fails(
        "align",
        "run",
        "--source",
        tmp_path / "missing",
        "--target",
        tmp_path / "t",
        "--out",
        tmp_path / "o",
        match="no such store directory",
    )
    _fails("store", "info", tmp_path, match="not an embedding store")
    _fails(
        "align",
        "fit",
        "--method",
        "bogus",
        "--source",
        tmp_path / "t",
        "--target",
        tmp_path / "t",
        "--out",
        tmp_path / "o",
        match="unknown alignment method 'bogus'",
    )
    _fails("store", "import", "--format", "xml", tmp_path, tmp_path / "o", match="unknown import format")
    _fails(
        "align",
        "apply",
        "--aligner",
        tmp_path / "t",
        "--source",
        tmp_path / "t",
        "--out",
        tmp_path / "o",
        match="not an aligner directory",
    )
    assert not (tmp_path / "o").exists()


def test_nan_stops_align_run_unless_skipped(tmp_path, rng):
    t, i = gapped_pair(rng, 100, 80, 8)
    t[13, 0] = np.inf
    make_store(tmp_path / "t", t, prefix="t")
    make_store(tmp_path / "i", i, prefix="i")
    args = ["align", "run", "--source", tmp_path / "t", "--target", tmp_path / "i", "--out", tmp_path / "o"]
    line = _fails(*args, match="'t13' (inf)")
    assert "shard-00000.arrow" in line and "--on-bad skip" in line
    assert not (tmp_path / "o").exists() and _no_temp_left(tmp_path)
    run_cli(*args, "--on-bad", "skip")
    assert len(EmbeddingStore.open(tmp_path / "o")) == 99
    assert json.loads((tmp_path / "o" / "bad_rows.jsonl").read_text())["id"] == "t13"


def test_truncated_shard_and_malicious_pickle_via_cli(tmp_path, rng):
    s = make_store(tmp_path / "t", rng.normal(size=(40, 4)))
    shard = s.path / s.manifest.shards[0].file
    shard.write_bytes(shard.read_bytes()[:-8])
    _fails(
        "align",
        "run",
        "--source",
        tmp_path / "t",
        "--target",
        tmp_path / "t",
        "--out",
        tmp_path / "o",
        match="truncated or replaced",
    )

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    (tmp_path / "pkl").mkdir()
    with open(tmp_path / "pkl" / "a.pkl", "wb") as f:
        pickle.dump([{"id": "x", "embed": Exploit()}], f)
    _fails("store", "import", tmp_path / "pkl", tmp_path / "st", match="unsafe pickle refused")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "st").exists()


def test_align_methods_lists_the_registry():
    from modgap.align import REGISTRY

    proc = run_cli("align", "methods")
    for name, cls in REGISTRY.items():
        assert name in proc.stdout and cls.kind in proc.stdout
    assert (
        "unknown alignment method 'nope'"
        in run_cli(
            "align", "fit", "--method", "nope", "--source", "a", "--target", "b", "--out", "c", check=False
        ).stderr
    )
