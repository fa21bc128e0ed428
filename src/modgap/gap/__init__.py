"""Modality-gap diagnostics."""

from modgap.gap.report import gap_report, read_pairs, report_html, report_json, report_rows

__all__ = ["gap_report", "read_pairs", "report_html", "report_json", "report_rows"]
