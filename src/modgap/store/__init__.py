"""Embedding stores: sharded Arrow IPC files of one modality's vectors plus a manifest."""

from modgap.store.checks import BadRows, bad_row_mask, unusable_rows
from modgap.store.formats import EXPORT_FORMATS, IMPORT_FORMATS, export_store, import_store
from modgap.store.info import sample_stats, store_info
from modgap.store.manifest import Manifest, ShardInfo
from modgap.store.merge import merge_sub_stores
from modgap.store.safe_pickle import safe_load
from modgap.store.search import METRICS, SearchResult, search
from modgap.store.store import Chunk, EmbeddingStore, StoreWriter
from modgap.store.stream import Rows, VectorSource, default_chunk_rows

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "METRICS",
    "BadRows",
    "Chunk",
    "EmbeddingStore",
    "Manifest",
    "Rows",
    "SearchResult",
    "ShardInfo",
    "StoreWriter",
    "VectorSource",
    "bad_row_mask",
    "default_chunk_rows",
    "export_store",
    "import_store",
    "merge_sub_stores",
    "safe_load",
    "sample_stats",
    "search",
    "store_info",
    "unusable_rows",
]
