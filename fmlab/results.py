"""Headline numbers a chapter hands to the book's results page.

``record("compress_int8_accuracy", acc)`` stores a measured value under a name with myst-nb's
``glue`` (without showing it), so the results page quotes the number the chapter's own run
produced and nothing is typed twice. Where myst-nb is not installed (Colab), it does nothing.
The value is returned, so a cell can record and use it in one line.
"""
from __future__ import annotations


def record(name: str, value):
    """Glue ``value`` under ``name`` for the book (a no-op without myst-nb); return ``value``."""
    try:
        from myst_nb import glue
    except ImportError:
        return value
    glue(name, value, display=False)
    return value
