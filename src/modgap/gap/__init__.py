"""Modality-gap diagnostics: ``metrics`` (the measures) and ``report`` (tables, JSON, HTML)."""

from modgap.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "read_pairs": "modgap.files",
        "gap_report": "report",
        "report_html": "report",
        "report_json": "report",
        "report_rows": "report",
    },
)
