"""Lab notebooks as data: read them, find their lab id, extract code, write student versions.

Explained in book/instructors.md.

Notebooks are read and written with ``nbformat`` (version 4; older versions are converted). A
master notebook marks each solution between ``# BEGIN SOLUTION`` and ``# END SOLUTION``
lines (any number of leading ``#``, as in nbgrader). The student version replaces each region,
markers included, with ``raise NotImplementedError`` at the marker's indentation, drops cells
tagged ``solution``, and clears outputs and execution counts. Markdown is kept as it is.
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import nbformat

BEGIN = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\b.*$")
END = re.compile(r"^\s*#+\s*END SOLUTION\b.*$")
SOLUTION_TAGS = {"solution", "solution-cell"}


class NotebookError(ValueError):
    """A notebook that cannot be graded or assigned; the message says why and what to do."""


def read_notebook(path: str | Path, strict: bool = False) -> nbformat.NotebookNode:
    """The notebook (nbformat 4); a clear :class:`NotebookError` when it is not one.

    A file that is a notebook but breaks nbformat's schema (a missing field, say) is returned
    as it is, so that its code is still graded; :func:`schema_problem` names what is wrong.
    With ``strict=True`` (masters), that is an error too.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotebookError(f"no notebook at {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NotebookError(f"{path} could not be read: {err}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise NotebookError(
            f"{path.name} is not valid notebook JSON ({err.msg} at line {err.lineno}, column "
            f"{err.colno}). Open it in Jupyter or Colab, save it again and resubmit."
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise NotebookError(f"{path.name} is JSON but not a notebook (no list of cells)")
    try:
        with warnings.catch_warnings():  # cells without ids (nbformat < 4.5) are fine to grade
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4, capture_validation_error={})
    except Exception:  # noqa: BLE001 - e.g. no nbformat version: read the cells as they are
        nb = nbformat.from_dict(raw)
    if strict:
        problem = schema_problem(nb)
        if problem:
            raise NotebookError(f"{path.name} is not a valid notebook: {problem}")
    return nb


def schema_problem(nb: dict) -> str | None:
    """What breaks nbformat's schema in ``nb``, in one line; None when it is valid."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nbformat.validate(nb, version=4)
    except nbformat.ValidationError as err:
        where = "/".join(str(p) for p in getattr(err, "absolute_path", []) or [])
        return f"{err.message}" + (f" (at {where})" if where else "")
    except Exception as err:  # noqa: BLE001 - a structure the validator cannot even walk
        return f"{type(err).__name__}: {err}"
    return None


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def lab_id(nb: dict) -> str | None:
    """The lab id stored in the notebook's metadata ``{"fmlab": {"lab": ...}}``, if any."""
    meta = nb.get("metadata") or {}
    lab = (meta.get("fmlab") or {}).get("lab") if isinstance(meta.get("fmlab"), dict) else None
    return lab if isinstance(lab, str) and lab else None


def code_cells(nb: dict) -> list[str]:
    """The source of every code cell, in order, as the Python that IPython would run.

    IPython's own input transformer turns magics and shell lines into calls of
    ``get_ipython()`` exactly where IPython recognises them (a ``!=`` or ``%`` that continues
    an expression stays Python); the grading child's ``get_ipython()`` makes those calls
    harmless. A cell the transformer cannot read is passed on as it is (its syntax error is
    then reported for that cell alone).
    """
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell
    cells = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        text = source(cell)
        try:
            cells.append(transform(text))
        except Exception:  # noqa: BLE001
            cells.append(text)
    return cells


def strip_solutions(text: str, where: str = "a cell") -> tuple[str, int]:
    """Replace each marked solution region with ``raise NotImplementedError``.

    Returns the new text and the number of regions replaced.
    """
    out, inside, count = [], None, 0
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        begin = BEGIN.match(line)
        if inside is None and begin:
            inside = lineno
            count += 1
            out.append(f"{begin.group(1)}raise NotImplementedError\n")
        elif inside is not None and BEGIN.match(line):
            raise NotebookError(f"{where}, line {lineno}: BEGIN SOLUTION inside the region opened at line {inside}")
        elif inside is not None and END.match(line):
            inside = None
        elif inside is None and END.match(line):
            raise NotebookError(f"{where}, line {lineno}: END SOLUTION without a BEGIN SOLUTION")
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise NotebookError(f"{where}: the BEGIN SOLUTION at line {inside} has no END SOLUTION")
    return "".join(out).rstrip("\n"), count


def student_version(nb: dict) -> dict:
    """The notebook a student gets: solutions replaced, solution cells dropped, outputs cleared."""
    nb = copy.deepcopy(nb)
    cells, regions = [], 0
    for index, cell in enumerate(nb["cells"]):
        tags = set((cell.get("metadata") or {}).get("tags", []))
        if tags & SOLUTION_TAGS:
            continue
        if cell.get("cell_type") == "code":
            text, n = strip_solutions(source(cell), where=f"cell {index + 1}")
            regions += n
            cell["source"] = text
            cell["outputs"] = []
            cell["execution_count"] = None
        cells.append(cell)
    nb["cells"] = cells
    if regions == 0:
        raise NotebookError("no '# BEGIN SOLUTION' regions found: is this a master notebook?")
    return nb


def write_notebook(nb: dict, path: str | Path) -> None:
    """Write ``nb`` with nbformat (validated), atomically."""
    from ..runtime import atomic_write

    node = nbformat.from_dict(nb)
    problem = schema_problem(node)
    if problem:
        raise NotebookError(f"refusing to write an invalid notebook to {path}: {problem}")
    text = nbformat.writes(node, version=4)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
