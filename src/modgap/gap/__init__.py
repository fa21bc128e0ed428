"""Modality-gap diagnostics."""

from modgap.files import read_pairs
from modgap.gap.report import gap_report, report_html, report_json, report_rows

__all__ = ["gap_report", "read_pairs", "report_html", "report_json", "report_rows"]
