"""Headline numbers a chapter hands to the book's results page (book/results.md).

``record("compress_int8_accuracy", acc)`` stores a measured value under a name with myst-nb's
``glue`` (without showing it), so the results page quotes the number the chapter's own run
produced and nothing is typed twice. Where myst-nb is not installed (Colab), nothing is glued.
Either way :func:`recorded` lists the names this process recorded, so a run can be compared
with the page. The value is returned, so a cell can record and use it in one line.

The page pastes it with ``{glue:text}`05_compression.ipynb::compress_int8_accuracy:.1%```; a
format spec like ``.1%`` needs a plain number, so one-element tensors and NumPy scalars are
stored as the Python number they hold.
"""
from __future__ import annotations

import re

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_recorded: dict[str, None] = {}  # the names recorded in this process, in order


def plain(value):
    """A one-element tensor or NumPy scalar as a Python number; anything else unchanged."""
    item = getattr(value, "item", None)
    if isinstance(value, (str, bytes)) or not callable(item):
        return value
    try:
        return item()  # torch and NumPy raise for more than one element
    except (ValueError, RuntimeError):
        return value


def record(name: str, value):
    """Glue ``value`` under ``name`` for the book (a no-op without myst-nb); return ``value``."""
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"result names are lowercase letters, digits and '_', starting with "
                         f"the chapter's short name (e.g. 'compress_int8_accuracy'), got {name!r}")
    _recorded[name] = None
    try:
        from myst_nb import glue
    except ImportError:
        return value
    glue(name, plain(value), display=False)
    return value


def recorded() -> list[str]:
    """The names :func:`record` has stored in this process (this kernel), in order."""
    return list(_recorded)


GLUE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+\.ipynb)::(\w+)(?::[^`]*)?`")


def quoted(page: str) -> set[tuple[str, str]]:
    """The ``(notebook, key)`` pairs a results page pastes with ``{glue:text}``, outside
    HTML comments.

    >>> sorted(quoted("| acc | {glue:text}`05_compression.ipynb::compress_int8_accuracy:.1%` |"))
    [('05_compression.ipynb', 'compress_int8_accuracy')]
    """
    body = re.sub(r"<!--.*?-->", "", page, flags=re.S)
    return set(GLUE.findall(body))
