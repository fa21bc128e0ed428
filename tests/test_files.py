"""Ground floor: rows read with file:line errors, settings files into dataclasses, run-directory claims."""

import dataclasses
import json

import pytest

from modgap.errors import ModgapError
from modgap.files import atomic_output_dir, from_mapping, load_dataclass, read_rows, write_jsonl
from modgap.training import check_run_dir, claim_run_dir, record_settings


def test_rows_from_every_format_agree(tmp_path):
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.csv").write_text("id,text\na,x\nb,y\n")
    (tmp_path / "r.tsv").write_text("id\ttext\na\tx\nb\ty\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    for suffix in ("jsonl", "json", "csv", "tsv", "parquet"):
        assert read_rows(tmp_path / f"r.{suffix}") == rows, suffix


def test_bad_rows_are_named_by_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n\n{"id": 2\n')
    with pytest.raises(ModgapError, match=r"bad\.jsonl:3: not valid JSON"):
        read_rows(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(ModgapError, match=r"list\.jsonl:2: expected a JSON object"):
        read_rows(tmp_path / "list.jsonl")
    (tmp_path / "bad.json").write_text('[{"id": 1},\n {"id": }]')
    with pytest.raises(ModgapError, match=r"bad\.json:2: not valid JSON"):
        read_rows(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("id,text\na,x\nb,y,z\n")
    with pytest.raises(ModgapError, match=r"bad\.csv:3: more fields"):
        read_rows(tmp_path / "bad.csv")
    with pytest.raises(ModgapError, match="no such data file"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(ModgapError, match="unknown row format"):
        read_rows(tmp_path / "r.txt")


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "whole").write_text("x")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["whole"]
    with pytest.raises(ModgapError, match="already exists"), atomic_output_dir(tmp_path / "out"):
        pass


@dataclasses.dataclass
class Settings:
    name: str
    size: int = 3


def test_settings_files_refuse_unknown_keys(tmp_path):
    (tmp_path / "s.yaml").write_text("name: a\nsize: 5\n")
    assert load_dataclass(Settings, tmp_path / "s.yaml") == Settings("a", 5)
    assert load_dataclass(Settings, tmp_path / "s.yaml", {"size": 7}) == Settings("a", 7)
    (tmp_path / "t.json").write_text('{"name": "a", "szie": 5}')
    with pytest.raises(ModgapError, match=r"t\.json: unknown settings \['szie'\]"):
        load_dataclass(Settings, tmp_path / "t.json")
    with pytest.raises(ModgapError, match="missing 1 required"):
        from_mapping(Settings, {}, "here")


def test_run_directory_claims(tmp_path):
    run = tmp_path / "run"
    assert claim_run_dir(run, {"seed": 0, "log_every": 10}) is False  # new: recorded
    assert claim_run_dir(run, {"seed": 0, "log_every": 10}) is True  # same settings: resumed
    with pytest.raises(ModgapError, match=r"seed \(0 -> 1\)"):
        claim_run_dir(run, {"seed": 1, "log_every": 10})
    assert claim_run_dir(run, {"seed": 0, "log_every": 5}, may_change={"log_every"}) is True
    # Without --resume an existing run is refused unless --overwrite.
    with pytest.raises(ModgapError, match="pass --resume"):
        check_run_dir(run, {"seed": 0}, resume=False)
    assert check_run_dir(run, {"seed": 0}, resume=False, overwrite=True) is False
    record_settings(tmp_path / "other", {"a": 1})
    assert json.loads((tmp_path / "other" / "settings.json").read_text()) == {"a": 1}


def test_rows_are_streamed_into_place_and_a_failing_writer_leaves_the_old_file(tmp_path):
    out = tmp_path / "rows.jsonl"
    write_jsonl(out, ({"id": i} for i in range(3)))
    assert [json.loads(x) for x in out.read_text().splitlines()] == [{"id": 0}, {"id": 1}, {"id": 2}]

    def broken():
        yield {"id": "new"}
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_jsonl(out, broken())
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]  # no temporary left behind
