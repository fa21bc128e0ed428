"""Embedding stores: sharded Arrow IPC files of one modality's vectors plus a manifest."""

from modgap.store.checks import BadRows
from modgap.store.formats import EXPORT_FORMATS, IMPORT_FORMATS, export_store, import_store
from modgap.store.manifest import Manifest, ShardInfo
from modgap.store.safe_pickle import safe_load
from modgap.store.store import Chunk, EmbeddingStore, StoreWriter, atomic_output_dir

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "BadRows",
    "Chunk",
    "EmbeddingStore",
    "Manifest",
    "ShardInfo",
    "StoreWriter",
    "atomic_output_dir",
    "export_store",
    "import_store",
    "safe_load",
]
