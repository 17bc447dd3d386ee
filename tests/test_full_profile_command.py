"""``make gpu`` (benchmarks/full_profile.py): every notebook in the full profile, one command.

On a CPU it refuses with one line; its smoke size runs here, on one chapter, and writes the
table a GPU run would write.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "full_profile.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    out = tmp_path / "r.md"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "--smoke" in run.stderr, run.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_smoke_size_runs_a_chapter_and_writes_its_table(tmp_path):
    out = tmp_path / "r.md"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out),
                          str(ROOT / "book" / "02_losses.ipynb")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    assert "smoke size" in text and "| `book/02_losses.ipynb` |" in text, text
    assert "ran to the end" in text, text
    numbers = [line for line in text.splitlines() if line.startswith("| `02_losses.ipynb` |")]
    assert numbers, "the chapter's recorded numbers are missing from the table"
