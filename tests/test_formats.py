import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_store, write_revision_pkls
from modgap.errors import BadVectorsError, ModgapError
from modgap.store import EmbeddingStore, export_store, import_store
from modgap.store.safe_pickle import safe_load


def test_revision_pkl_round_trip_keeps_files_ids_and_metadata(tmp_path, rng):
    x = rng.normal(size=(250, 12)).astype(np.float32)
    ids = write_revision_pkls(tmp_path / "pkl", x, prefix="img", per_file=100, key="image_path")
    s = import_store("revision-pkl", tmp_path / "pkl", tmp_path / "store", modality="image")
    assert s.ids() == ids and s.dtype == np.float32  # float32 source keeps its precision
    assert s.metadata_columns == ["image_path", "source"]
    np.testing.assert_array_equal(s.to_numpy(), x)
    export_store("revision-pkl", s, tmp_path / "back")
    assert sorted(os.listdir(tmp_path / "back")) == ["_modgap_export.json", "img_0.pkl", "img_1.pkl", "img_2.pkl"]
    for name in ("img_0.pkl", "img_2.pkl"):
        with open(tmp_path / "pkl" / name, "rb") as f:
            orig = pickle.load(f)
        with open(tmp_path / "back" / name, "rb") as f:
            back = pickle.load(f)
        assert [r["id"] for r in back] == [r["id"] for r in orig]
        assert [r["image_path"] for r in back] == [r["image_path"] for r in orig]
        np.testing.assert_array_equal(np.stack([r["embed"] for r in back]), np.stack([r["embed"] for r in orig]))


def test_npy_round_trip(tmp_path, rng):
    x = rng.normal(size=(300, 7)).astype(np.float32)
    s = make_store(tmp_path / "s", x, shard_rows=128)
    export_store("npy", s, tmp_path / "npy")
    arr = np.load(tmp_path / "npy" / "embeddings.npy")
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, x)
    assert (tmp_path / "npy" / "ids.txt").read_text().splitlines() == s.ids()
    s2 = import_store("npy", tmp_path / "npy", tmp_path / "s2", dtype="float16")
    assert s2.ids() == s.ids()
    np.testing.assert_array_equal(s2.to_numpy(), x.astype(np.float16))


def test_parquet_round_trip(tmp_path, rng):
    x = rng.normal(size=(300, 5)).astype(np.float32)
    s = make_store(tmp_path / "s", x, shard_rows=128, metadata={"text": [f"t{k}" for k in range(300)]})
    export_store("parquet", s, tmp_path / "pq")
    assert len(list((tmp_path / "pq").glob("*.parquet"))) == 3
    s2 = import_store("parquet", tmp_path / "pq", tmp_path / "s2")
    assert s2.ids() == s.ids() and s2.metadata_columns == ["text"]
    assert s2.read_table().column("text").to_pylist() == [f"t{k}" for k in range(300)]
    np.testing.assert_array_equal(s2.to_numpy(), x)


def test_parquet_with_variable_lists_and_custom_columns(tmp_path):
    t = pa.table({"key": ["a", "b"], "vec": [[1.0, 2.0], [3.0, 4.0]], "caption": ["x", "y"]})
    pq.write_table(t, tmp_path / "in.parquet")
    s = import_store("parquet", tmp_path / "in.parquet", tmp_path / "s", id_column="key", embedding_column="vec")
    assert s.ids() == ["a", "b"] and s.metadata_columns == ["caption"]
    bad = pa.table({"id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(ModgapError, match=r"bad.parquet: row 2 has an embedding of length 1, expected 2"):
        import_store("parquet", tmp_path / "bad.parquet", tmp_path / "s3")
    assert not (tmp_path / "s3").exists()
    with pytest.raises(ModgapError, match=r"in.parquet: no column 'id' \(columns: \['key', 'vec', 'caption'\]\)"):
        import_store("parquet", tmp_path / "in.parquet", tmp_path / "s4")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkl").mkdir()
    with open(tmp_path / "pkl" / "evil.pkl", "wb") as f:
        pickle.dump([{"id": "a", "embed": np.ones(3, np.float32), "x": _Exploit()}], f)
    with pytest.raises(
        ModgapError, match=r"evil.pkl: unsafe pickle refused, not loaded \(refused to load global posix.system\)"
    ):
        import_store("revision-pkl", tmp_path / "pkl", tmp_path / "store")
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "store").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_object_arrays_are_refused(tmp_path):
    with open(tmp_path / "obj.pkl", "wb") as f:
        pickle.dump([{"id": "a", "embed": np.array([1, "x"], dtype=object)}], f)
    with pytest.raises(ModgapError, match="object dtype is not allowed"):
        safe_load(tmp_path / "obj.pkl")


def test_truncated_pickle(tmp_path, rng):
    write_revision_pkls(tmp_path / "pkl", rng.normal(size=(10, 4)), prefix="t", per_file=10)
    f = tmp_path / "pkl" / "t_0.pkl"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(ModgapError, match="t_0.pkl: corrupt or truncated pickle"):
        import_store("revision-pkl", tmp_path / "pkl", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_pickle_dimension_mismatch_names_file_and_record(tmp_path, rng):
    write_revision_pkls(tmp_path / "pkl", rng.normal(size=(10, 4)), prefix="t", per_file=5)
    with open(tmp_path / "pkl" / "t_1.pkl", "rb") as f:
        recs = pickle.load(f)
    recs[2]["embed"] = np.ones(5, np.float32)
    with open(tmp_path / "pkl" / "t_1.pkl", "wb") as f:
        pickle.dump(recs, f)
    with pytest.raises(ModgapError, match=r"t_1.pkl: record 2 \(id 't7'\) has dimension 5, expected 4"):
        import_store("revision-pkl", tmp_path / "pkl", tmp_path / "store")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("value,reason", [(np.nan, "nan"), (np.inf, "inf"), (0.0, "zero")])
def test_bad_vectors_stop_the_import_naming_file_and_ids(tmp_path, rng, value, reason):
    x = rng.normal(size=(10, 4)).astype(np.float32)
    if value == 0.0:
        x[3] = 0.0
    x[3, 1] = value
    write_revision_pkls(tmp_path / "pkl", x, prefix="t", per_file=10)
    with pytest.raises(
        BadVectorsError, match=rf"t_0.pkl: 1 unusable vector\(s\) \(NaN, Inf or zero\): 't3' \({reason}\)"
    ) as e:
        import_store("revision-pkl", tmp_path / "pkl", tmp_path / "store")
    assert e.value.ids == ["t3"]
    assert not (tmp_path / "store").exists()
    s = import_store("revision-pkl", tmp_path / "pkl", tmp_path / "store", on_bad="skip")
    assert "t3" not in s.ids() and len(s) == 9
    report = [json.loads(line) for line in (tmp_path / "store" / "bad_rows.jsonl").read_text().splitlines()]
    assert report == [{"where": str(tmp_path / "pkl" / "t_0.pkl"), "id": "t3", "reason": reason}]


def test_empty_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModgapError, match="no \\*.pkl files"):
        import_store("revision-pkl", tmp_path / "empty", tmp_path / "s")
    with open(tmp_path / "empty" / "a.pkl", "wb") as f:
        pickle.dump([], f)
    with pytest.raises(ModgapError, match="empty list"):
        import_store("revision-pkl", tmp_path / "empty", tmp_path / "s")


def test_npy_ids_count_must_match(tmp_path, rng):
    np.save(tmp_path / "embeddings.npy", rng.normal(size=(3, 2)))
    (tmp_path / "ids.txt").write_text("a\nb\n")
    with pytest.raises(ModgapError, match="2 ids for 3 rows"):
        import_store("npy", tmp_path / "embeddings.npy", tmp_path / "s")


def test_export_refuses_to_overwrite(tmp_path, rng):
    s = make_store(tmp_path / "s", rng.normal(size=(3, 2)))
    (tmp_path / "out").mkdir()
    with pytest.raises(ModgapError, match="already exists"):
        export_store("npy", s, tmp_path / "out")
    export_store("npy", s, tmp_path / "out", overwrite=True)
    assert EmbeddingStore.open(tmp_path / "s").ids() == (tmp_path / "out" / "ids.txt").read_text().split()
