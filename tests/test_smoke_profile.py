"""The full profile's size tables, which the chapters' smoke runs (in tests/test_colab.py, in
Colab's bare install) lay their ``"smoke"`` entries over, and why the labs need no smoke run.

The labs size nothing by profile (their checks fix their cases and read the embedded images),
so their full-profile run would repeat their quick one, which tests/test_colab.py makes.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import nbformat
import pytest

import fmlab

ROOT = Path(__file__).resolve().parents[1]


def test_no_lab_sizes_itself_by_profile():
    """What makes the labs' full-profile run a repetition: no master lab reads the profile."""
    for lab in sorted(ROOT.glob("labs/*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(lab, as_version=4).cells
                         if c.cell_type == "code")
        assert "profile(" not in code and "SIZES" not in code, (
            f"{lab.name} sizes itself by profile: run it in "
            "tests/test_colab.py's test_full_profile_smoke_run_without_the_full_datasets too")


def size_tables():
    """(module name, SIZES) for every fmlab module that defines a chapter's size table."""
    for info in pkgutil.iter_modules(fmlab.__path__):
        if info.name.startswith("_"):  # __main__ runs the command line
            continue
        module = importlib.import_module(f"fmlab.{info.name}")
        if isinstance(getattr(module, "SIZES", None), dict):
            yield info.name, module.SIZES


@pytest.mark.parametrize("name, sizes", list(size_tables()), ids=lambda v: str(v)[:20])
def test_every_size_table_has_a_smoke_entry_within_its_profiles(name, sizes):
    assert {"quick", "full", "smoke"} <= set(sizes), (
        f"fmlab.{name}.SIZES needs 'quick', 'full' and 'smoke' entries")
    assert sizes["quick"].keys() == sizes["full"].keys(), name
    extra = set(sizes["smoke"]) - set(sizes["quick"])
    assert not extra, f"fmlab.{name}.SIZES['smoke'] sets keys no profile has: {sorted(extra)}"
