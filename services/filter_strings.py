"""Values written into MLflow search filter strings (``name = '...'``, ``trace.tag.`k` = "..."``)."""

from __future__ import annotations


def escape(value: str, quote: str = "'") -> str:
    """``value`` for a filter-string literal between ``quote`` characters: backslashes and that quote escaped."""
    return value.replace("\\", "\\\\").replace(quote, "\\" + quote)


def escape_double(value: str) -> str:
    """``value`` for a double-quoted filter-string literal (the trace search's tag and metadata clauses)."""
    return escape(value, '"')
