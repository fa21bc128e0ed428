import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from conftest import make_store
from modgap.errors import ModgapError
from modgap.store import EmbeddingStore, StoreWriter


def test_round_trip_across_shards_and_appends(tmp_path, rng):
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    with StoreWriter(tmp_path / "s", dim=16, dtype="float32", shard_rows=300, metadata_columns=["text"]) as w:
        w.write([f"i{k}" for k in range(600)], x[:600], {"text": [f"t{k}" for k in range(600)]})
    with StoreWriter(tmp_path / "s", dim=16, dtype="float32", metadata_columns=["text"]) as w:  # append
        w.write([f"i{k}" for k in range(600, 1000)], x[600:])
    s = EmbeddingStore.open(tmp_path / "s", verify=True)
    assert len(s) == 1000 and s.num_shards == 3  # 2 of 300 rows, then the appended 400
    np.testing.assert_array_equal(s.to_numpy(), x)
    assert s.ids() == [f"i{k}" for k in range(1000)]
    table = s.read_table()
    assert table.column("text").to_pylist()[599] == "t599" and table.column("text").to_pylist()[600] is None
    np.testing.assert_array_equal(s.get(["i999", "i5", "i300"]), x[[999, 5, 300]])


def test_chunks_exact_ranges_and_zero_copy(tmp_path, rng):
    x = rng.normal(size=(1000, 8)).astype(np.float16)
    s = make_store(tmp_path / "s", x, dtype="float16", shard_rows=300)
    chunks = list(s.iter_chunks(128))
    assert [len(c) for c in chunks] == [128] * 7 + [104]
    np.testing.assert_array_equal(np.concatenate([c.embeddings for c in chunks]), x)
    assert chunks[0].ids[:2] == ["r0", "r1"]
    part = list(s.iter_chunks(1000, rows=(250, 710), exact=False))
    assert [(c.start, len(c)) for c in part] == [(250, 50), (300, 300), (600, 110)]
    view = part[1].embeddings
    assert not view.flags.writeable and not view.flags.owndata  # a view of the memory-mapped file


def test_float16_storage_and_dtype(tmp_path, rng):
    x = rng.normal(size=(10, 4))
    s = make_store(tmp_path / "s", x, dtype="float16")
    assert s.dtype == np.float16
    np.testing.assert_array_equal(s.to_numpy(), x.astype(np.float16))


def test_duplicate_ids_rejected_with_their_names(tmp_path, rng):
    x = rng.normal(size=(3, 4))
    make_store(tmp_path / "s", x)
    with (
        pytest.raises(ModgapError, match=r"duplicate id\(s\): 'new', 'r1'"),
        StoreWriter(tmp_path / "s", dim=4, dtype="float32") as w,
    ):
        w.write(["r1", "new", "new"], x)
    assert len(EmbeddingStore.open(tmp_path / "s")) == 3


def test_append_must_match_dim(tmp_path, rng):
    make_store(tmp_path / "s", rng.normal(size=(3, 4)))
    with pytest.raises(ModgapError, match="cannot append dim=5"):
        StoreWriter(tmp_path / "s", dim=5, dtype="float32")


def test_shards_readable_by_pandas_and_hf_datasets(tmp_path, rng):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    x = rng.normal(size=(20, 4)).astype(np.float32)
    s = make_store(tmp_path / "s", x, shard_rows=8, metadata={"text": [str(k) for k in range(20)]})
    files = [str(s.path / sh.file) for sh in s.manifest.shards]
    df = pd.read_feather(files[0])
    np.testing.assert_array_equal(np.stack(df["embedding"].to_list()), x[:8])
    ds = datasets.load_dataset("arrow", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds["id"][:3] == ["r0", "r1", "r2"] and len(ds) == 20
    np.testing.assert_allclose(np.asarray(ds[19]["embedding"]), x[19])


def test_truncated_missing_and_disagreeing_shards(tmp_path, rng):
    s = make_store(tmp_path / "s", rng.normal(size=(50, 4)), shard_rows=20)
    shard = s.path / s.manifest.shards[1].file
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(ModgapError, match=r"shard-00001.arrow has \d+ bytes, the manifest says"):
        EmbeddingStore.open(s.path)
    shard.unlink()
    with pytest.raises(ModgapError, match="shard-00001.arrow is listed in the manifest but missing"):
        EmbeddingStore.open(s.path)
    shard.write_bytes(data)
    m = json.loads((s.path / "manifest.json").read_text())
    m["shards"][0]["rows"] = 21
    m["count"] = 51
    (s.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModgapError, match="shard holds 20 rows, the manifest says 21"):
        list(EmbeddingStore.open(s.path).iter_chunks())
    m["count"] = 7
    (s.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModgapError, match="manifest count 7 disagrees"):
        EmbeddingStore.open(s.path)


def test_checksum_verification_catches_corruption(tmp_path, rng):
    s = make_store(tmp_path / "s", rng.normal(size=(50, 4)))
    shard = s.path / s.manifest.shards[0].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    EmbeddingStore.open(s.path)  # size unchanged: only --verify notices
    with pytest.raises(ModgapError, match="fails its checksum"):
        EmbeddingStore.open(s.path, verify=True)


def test_not_a_store(tmp_path):
    with pytest.raises(ModgapError, match="no such store directory"):
        EmbeddingStore.open(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(ModgapError, match="not an embedding store"):
        EmbeddingStore.open(tmp_path / "d")


def test_killed_writer_leaves_only_complete_shards(tmp_path):
    """kill -9 in the middle of a shard: the store shows the committed shards, and the next writer cleans up."""
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from modgap.store import Manifest, StoreWriter
        path = {str(tmp_path / "s")!r}
        w = StoreWriter(path, dim=8, dtype="float32", shard_rows=100)
        for b in range(100000):
            w.write([f"r{{b}}_{{k}}" for k in range(30)], np.ones((30, 8), np.float32))
            if b % 10 == 5 and Manifest.load(path).shards:  # at least one shard committed, one in progress
                print("ready", flush=True)
                break
        while True:
            w.write([f"r{{b}}_{{k}}" for k in range(30)], np.ones((30, 8), np.float32))
            b += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = EmbeddingStore.open(tmp_path / "s", verify=True)
    assert len(s) % 100 == 0 and len(s) >= 100
    assert s.to_numpy().shape == (len(s), 8)
    with StoreWriter(tmp_path / "s", dim=8, dtype="float32") as w:
        w.write(["extra"], np.zeros((1, 8), np.float32))
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert all(not n.startswith(".tmp-") for n in names)
    assert len(EmbeddingStore.open(tmp_path / "s", verify=True)) == len(s) + 1


def test_writer_exception_discards_unfinished_shard(tmp_path):
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "s", dim=2, dtype="float32", shard_rows=10) as w:
        w.write([str(k) for k in range(15)], np.ones((15, 2)))
        raise RuntimeError("boom")
    s = EmbeddingStore.open(tmp_path / "s")
    assert len(s) == 10
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.startswith(".tmp")] == []


def test_embedding_schema_is_fixed_size_list(tmp_path, rng):
    s = make_store(tmp_path / "s", rng.normal(size=(3, 4)), dtype="float16")
    assert s.read_table().schema.field("embedding").type == pa.list_(pa.float16(), 4)
