"""Embedding stores: sharded Arrow IPC files of one modality's vectors plus a manifest.

Rooms: ``store`` (reader and writer), ``manifest``, ``stream`` (row sources), ``checks`` (unusable rows),
``formats`` (import/export), ``info``, ``merge``, ``topk`` (exact search), ``ann`` (approximate search with
faiss, optional), ``safe_pickle``.
"""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "FaissIndex": "ann",
        "approximate_search": "ann",
        "build_index": "ann",
        "BadRows": "checks",
        "bad_row_mask": "checks",
        "unusable_rows": "checks",
        "EXPORT_FORMATS": "formats",
        "IMPORT_FORMATS": "formats",
        "export_store": "formats",
        "import_store": "formats",
        "sample_stats": "info",
        "store_info": "info",
        "Manifest": "manifest",
        "ShardInfo": "manifest",
        "merge_sub_stores": "merge",
        "safe_load": "safe_pickle",
        "METRICS": "topk",
        "SearchResult": "topk",
        "search": "topk",
        "Chunk": "store",
        "EmbeddingStore": "store",
        "StoreWriter": "store",
        "Rows": "stream",
        "VectorSource": "stream",
        "default_chunk_rows": "stream",
    },
)
