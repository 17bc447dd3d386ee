import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("FMLAB_PROFILE", "quick")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (make test runs two workers on two cores) every process gets one
    # thread: two OpenMP threads per process on shared cores slow torch down 5-18x. Setting the
    # variables here also limits what this worker starts: nbval's notebook kernels and the
    # subprocesses of the tests inherit the environment.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tmp_data_dir(tmp_path, monkeypatch):
    """An empty FMLAB_DATA, so tests never touch the user's cache."""
    monkeypatch.setenv("FMLAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"
