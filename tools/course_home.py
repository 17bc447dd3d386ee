"""The course's home, set once in _config.yml, and everything that is made from it.

``_config.yml`` names the repository and branch the course is published from::

    repository:
      url: https://github.com/fmlab-course/fmlab
      branch: main

From them come the website's launch buttons (Jupyter Book reads the same keys) and the
install line in the first cell of every notebook (book/, labs/, labs/student/) and in the
GitHub Classroom workflow template. A fork changes the two keys, then runs::

    python tools/course_home.py           # rewrite the install cells (make sync-install-cells)
    python tools/course_home.py --check   # exit 1 and name every file that disagrees, and
                                          # every stale student notebook in labs/student/

The install cell runs only inside Colab. ``FMLAB_INSTALL_URL`` overrides the URL it installs
from (the tests point it at a local clone, ``git+file:///...``).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = Path("labs/templates/grade.yml")
INSTALL_ENV = "FMLAB_INSTALL_URL"
CELL_TEMPLATE = '''\
# Runs only in Google Colab, where fmlab is not installed yet; does nothing elsewhere.
# The URL comes from _config.yml (repository:); `make sync-install-cells` rewrites it.
import os, subprocess, sys
if "google.colab" in sys.modules:
    FMLAB = "{url}"
    url = os.environ.get("{env}", FMLAB)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"fmlab @ {{url}}"],
                   check=True)'''
WORKFLOW_LINE = re.compile(r'("fmlab @ )([^"]+)(")')


def home(root: Path = ROOT) -> tuple[str, str]:
    """(repository URL, branch) from ``_config.yml``; a clear error when either is missing."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    repo = (config or {}).get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch")
    if not url or not branch:
        raise SystemExit(f"{root / '_config.yml'}: set repository.url and repository.branch "
                         "(the course's home, e.g. https://github.com/you/fmlab and main)")
    return url.rstrip("/"), branch


def install_url(root: Path = ROOT) -> str:
    """What pip installs in Colab: ``git+<url>@<branch>``."""
    url, branch = home(root)
    return f"git+{url}@{branch}"


def install_cell(root: Path = ROOT) -> str:
    """The exact source of every notebook's first code cell."""
    return CELL_TEMPLATE.format(url=install_url(root), env=INSTALL_ENV)


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every notebook that carries an install cell: chapters, master labs, student labs."""
    return sorted(root.glob("book/*.ipynb")) + sorted(root.glob("labs/*.ipynb")) + sorted(
        root.glob("labs/student/*.ipynb"))


def first_code_cell(nb) -> dict | None:
    return next((c for c in nb.cells if c.cell_type == "code"), None)


def disagreements(root: Path = ROOT) -> list[str]:
    """Files whose install line is not the one ``_config.yml`` implies (empty when all agree)."""
    want, url = install_cell(root), install_url(root)
    problems = []
    for path in notebooks(root):
        cell = first_code_cell(nbformat.read(path, as_version=4))
        if cell is None or cell.source != want:
            problems.append(f"{path.relative_to(root)}: the first code cell is not the install "
                            f"cell for {url}")
    workflow = root / WORKFLOW
    if workflow.is_file():
        found = WORKFLOW_LINE.findall(workflow.read_text(encoding="utf-8"))
        if not found or any(m[1] != url for m in found):
            problems.append(f"{WORKFLOW}: installs {[m[1] for m in found]}, not {url}")
    return problems


def stale_students(root: Path = ROOT) -> list[str]:
    """Student notebooks in labs/student/ that regenerating from labs/ would change."""
    import tempfile

    from fmlab.grading.assign import write_student_versions

    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for _, p, _ in write_student_versions(root / "labs", tmp)}
        committed = {p.name: p for p in (root / "labs" / "student").glob("*.ipynb")}
        for name in sorted(fresh.keys() | committed.keys()):
            if name not in committed:
                problems.append(f"labs/student/{name} is missing")
            elif name not in fresh:
                problems.append(f"labs/student/{name} has no master labs/{name}")
            elif fresh[name].read_bytes() != committed[name].read_bytes():
                problems.append(f"labs/student/{name} differs from what labs/{name} generates")
    if problems:
        problems.append("run `make students` (fmlab assign labs --out labs/student --no-prove)"
                        " and commit labs/student/")
    return problems


def sync(root: Path = ROOT) -> list[Path]:
    """Rewrite every install cell (and the workflow's install line); return the files changed."""
    want, url = install_cell(root), install_url(root)
    changed = []
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=4)
        cell = first_code_cell(nb)
        if cell is None:
            raise SystemExit(f"{path}: no code cell; add the install cell first")
        if cell.source != want:
            cell.source = want
            cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | {"remove-cell"})
            nbformat.write(nb, path)
            changed.append(path)
    workflow = root / WORKFLOW
    if workflow.is_file():
        text = workflow.read_text(encoding="utf-8")
        new = WORKFLOW_LINE.sub(lambda m: m[1] + url + m[3], text)
        if new != text:
            workflow.write_text(new, encoding="utf-8")
            changed.append(workflow)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 when a file disagrees with _config.yml")
    args = parser.parse_args(argv)
    if args.check:
        problems = disagreements()
        if problems:
            problems.append("run `make sync-install-cells` to rewrite them from _config.yml")
        problems += stale_students()
        for p in problems:
            print(p)
        return 1 if problems else 0
    for path in sync():
        print(f"rewrote {path.relative_to(ROOT)}")
    print(f"every install cell installs {install_url()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
