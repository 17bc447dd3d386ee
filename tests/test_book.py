"""The website builds with warnings as errors: MyST, math labels, cross-references, citations,
the table of contents and the published (student) lab pages.

Execution is off here because nbval already executes every notebook in this suite; `make book`
builds the same site with every notebook executed.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_builds_without_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "_toc.yml", src)
    shutil.copytree(ROOT / "book", src / "book", ignore=shutil.ignore_patterns("labs", "_build"))
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    (src / "_config.yml").write_text(yaml.safe_dump(config))
    assign = subprocess.run([sys.executable, "-m", "fmlab", "assign", str(ROOT / "labs"),
                             "--out", str(src / "book" / "labs"), "--no-prove"],
                            capture_output=True, text=True)
    assert assign.returncode == 0, assign.stdout + assign.stderr
    jb = Path(sys.executable).parent / "jupyter-book"
    build = subprocess.run([str(jb), "build", str(src), "-W", "-n", "--keep-going",
                            "--path-output", str(tmp_path / "out")], capture_output=True, text=True)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-5000:]
    html = tmp_path / "out" / "_build" / "html"
    for page in ["book/intro", "book/01_training_cnn", "book/02_losses", "book/03_optimizers",
                 "book/04_adversarial", "book/instructors", "book/labs/01_cnn", "book/bibliography"]:
        assert (html / f"{page}.html").is_file(), page
    student = (html / "book/labs/01_cnn.html").read_text()
    assert "NotImplementedError" in student and "BEGIN SOLUTION" not in student
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()  # math works offline
    assert "cdn.jsdelivr.net/npm/mathjax" not in (html / "book/02_losses.html").read_text()
