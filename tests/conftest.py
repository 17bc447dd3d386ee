import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("FMLAB_PROFILE", "quick")


@pytest.fixture
def tmp_data_dir(tmp_path, monkeypatch):
    """An empty FMLAB_DATA, so tests never touch the user's cache."""
    monkeypatch.setenv("FMLAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"
