"""Lab notebooks as data: read them, find their lab id, extract code, write student versions.

Explained in book/instructors.md.

A master notebook marks each solution between ``# BEGIN SOLUTION`` and ``# END SOLUTION``
lines (any number of leading ``#``, as in nbgrader). The student version replaces each region,
markers included, with ``raise NotImplementedError`` at the marker's indentation, drops cells
tagged ``solution``, and clears outputs and execution counts. Markdown is kept as it is.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

BEGIN = re.compile(r"^(\s*)#+\s*BEGIN SOLUTION\b.*$")
END = re.compile(r"^\s*#+\s*END SOLUTION\b.*$")
SOLUTION_TAGS = {"solution", "solution-cell"}


class NotebookError(ValueError):
    """A notebook that cannot be graded or assigned; the message says why and what to do."""


def read_notebook(path: str | Path) -> dict:
    """The notebook as a JSON dict; a clear :class:`NotebookError` when it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotebookError(f"no notebook at {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise NotebookError(f"{path} could not be read: {err}") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as err:
        raise NotebookError(
            f"{path.name} is not valid notebook JSON ({err.msg} at line {err.lineno}, column "
            f"{err.colno}). Open it in Jupyter or Colab, save it again and resubmit."
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{path.name} is JSON but not a notebook (no list of cells)")
    return nb


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def lab_id(nb: dict) -> str | None:
    """The lab id stored in the notebook's metadata ``{"fmlab": {"lab": ...}}``, if any."""
    meta = nb.get("metadata") or {}
    lab = (meta.get("fmlab") or {}).get("lab") if isinstance(meta.get("fmlab"), dict) else None
    return lab if isinstance(lab, str) and lab else None


def code_cells(nb: dict) -> list[str]:
    """The source of every code cell, in order, with IPython magics made plain Python.

    Lines starting with ``!`` or ``%`` (shell commands, magics) become ``pass`` so that line
    numbers in error messages still match the notebook.
    """
    cells = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        lines = source(cell).splitlines(keepends=True)
        out = []
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith(("!", "%")):
                indent = line[: len(line) - len(stripped)]
                out.append(f"{indent}pass  # removed while grading: {stripped.strip()[:60]}\n")
            else:
                out.append(line)
        cells.append("".join(out))
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
    leftover = [i for i, c in enumerate(cells, 1) if c.get("cell_type") == "code"
                and any(BEGIN.match(l) or END.match(l) for l in source(c).splitlines())]
    if leftover:  # cannot happen after strip_solutions; guards against a future edit
        raise NotebookError(f"solution markers left in cells {leftover}")
    return nb


def write_notebook(nb: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
