import os

import pytest
import torch

import fmlab
from fmlab import runtime


def test_profile_default_is_quick_without_cuda(monkeypatch):
    monkeypatch.delenv("FMLAB_PROFILE", raising=False)
    expected = "full" if torch.cuda.is_available() else "quick"
    assert runtime.profile().name == expected


@pytest.mark.parametrize("name", ["quick", "full", " FULL "])
def test_profile_env_override(monkeypatch, name):
    monkeypatch.setenv("FMLAB_PROFILE", name)
    assert runtime.profile().name == name.strip().lower()


def test_profile_sizes_differ():
    quick, full = runtime.profile("quick"), runtime.profile("full")
    assert quick.n_train == 4000 and full.n_train is None
    assert not quick.amp and full.amp


def test_unknown_profile_says_what_to_use(monkeypatch):
    monkeypatch.setenv("FMLAB_PROFILE", "medium")
    with pytest.raises(ValueError, match="quick, full"):
        runtime.profile()


def test_pick_chapter_sizes():
    sizes = {"quick": {"epochs": 2}, "full": {"epochs": 20}}
    assert runtime.profile("quick").pick(sizes) == {"epochs": 2}
    assert runtime.profile("full").pick(sizes) == {"epochs": 20}
    with pytest.raises(KeyError, match="no entry for profile 'full'"):
        runtime.profile("full").pick({"quick": {}})


def test_seed_everything_repeats():
    fmlab.seed_everything(3)
    a = torch.randn(5)
    g = fmlab.seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    assert torch.equal(torch.randint(0, 100, (4,), generator=g),
                       torch.randint(0, 100, (4,), generator=torch.Generator().manual_seed(3)))


def test_device_override(monkeypatch):
    monkeypatch.setenv("FMLAB_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")


def test_data_dir_from_env(tmp_data_dir):
    assert runtime.data_dir() == tmp_data_dir and tmp_data_dir.is_dir()
    assert runtime.cache_dir("models").parent == tmp_data_dir


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("FMLAB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.device() == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.device() == torch.device("cuda")
    monkeypatch.setenv("FMLAB_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")


def test_seed_everything_seeds_python_numpy_and_torch():
    import random

    import numpy as np

    runtime.seed_everything(2**32 + 5)  # numpy takes the seed modulo 2**32
    draws = random.random(), np.random.rand(), torch.rand(1)
    runtime.seed_everything(5)
    assert random.random() != draws[0] and np.random.rand() == draws[1]
    runtime.seed_everything(2**32 + 5)
    assert (random.random(), np.random.rand()) == draws[:2] and torch.equal(torch.rand(1), draws[2])


def test_seed_everything_makes_cudnn_deterministic(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    runtime.seed_everything(7)
    assert set(seeded) == {7} and torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    runtime.seed_everything(7, deterministic=False)
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


@pytest.mark.parametrize("value,smoke", [("1", True), ("yes", True), (" TRUE ", True), ("", False),
                                         ("0", False), ("false", False), ("No", False)])
def test_smoke_overlays_the_smoke_entry(monkeypatch, value, smoke):
    monkeypatch.setenv("FMLAB_SMOKE", value)
    sizes = {"quick": {"epochs": 5, "n": 100}, "full": {"epochs": 20, "n": None},
             "smoke": {"epochs": 1}}
    p = runtime.profile("quick")
    assert p.smoke is smoke and p.name == "quick"
    assert p.pick(sizes) == ({"epochs": 1, "n": 100} if smoke else {"epochs": 5, "n": 100})
    assert sizes["quick"] == {"epochs": 5, "n": 100}  # the table itself is left alone
    assert runtime.profile("full").pick({"quick": {}, "full": {"n": 2}}) == {"n": 2}  # no smoke entry


def test_profiles_hold_their_documented_sizes(monkeypatch):
    monkeypatch.setenv("FMLAB_PROFILE", "full")
    assert runtime.profile("quick").name == "quick"  # an explicit name beats the environment
    q, f = runtime.PROFILES["quick"], runtime.PROFILES["full"]
    assert (q.n_train, q.n_test, q.epochs, q.batch_size, q.amp) == (4000, 1000, 8, 64, False)
    assert (f.n_train, f.n_test, f.epochs, f.batch_size, f.amp) == (None, None, 15, 128, True)
    monkeypatch.setenv("FMLAB_PROFILE", "medium")
    with pytest.raises(ValueError, match="unknown profile 'medium': use one of quick, full "
                                         r"\(set FMLAB_PROFILE=quick for a CPU-sized run\)"):
        runtime.profile()


def test_data_dir_defaults_to_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FMLAB_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert runtime.data_dir() == tmp_path / ".cache" / "fmlab" and runtime.data_dir().is_dir()
    assert runtime.cache_dir() == tmp_path / ".cache" / "fmlab" / "models"
    assert runtime.cache_dir("runs").is_dir()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "deep" / "r.txt"
    assert runtime.atomic_write(target, lambda tmp: tmp.write_text("old")) == target
    with pytest.raises(OSError, match="disk full"):
        def fail(tmp):
            tmp.write_text("half")
            raise OSError("disk full")
        runtime.atomic_write(str(target), fail)
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["r.txt"]


def test_default_threads(monkeypatch):
    monkeypatch.delenv("FMLAB_THREADS", raising=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    assert runtime.default_threads() == 2
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert runtime.default_threads() == 1  # at least one

    def no_affinity(pid):
        raise OSError

    monkeypatch.setattr(runtime.os, "sched_getaffinity", no_affinity, raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 6)
    assert runtime.default_threads() == 3
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: None)
    assert runtime.default_threads() == 1
    monkeypatch.setenv("FMLAB_THREADS", " 3 ")
    assert runtime.default_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("FMLAB_THREADS", bad)
        with pytest.raises(ValueError, match=f"FMLAB_THREADS='{bad}': give a whole number"):
            runtime.default_threads()


def test_set_threads_sets_torch(monkeypatch):
    threads = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("FMLAB_THREADS", "2")
        assert runtime.set_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_profile_default_is_full_with_cuda(monkeypatch):
    monkeypatch.delenv("FMLAB_PROFILE", raising=False)
    monkeypatch.delenv("FMLAB_SMOKE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.profile() is runtime.PROFILES["full"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.profile() is runtime.PROFILES["quick"]


def test_folders_are_made_with_their_parents_and_again(tmp_data_dir):
    deep = runtime.cache_dir("runs/ch1")
    assert deep == tmp_data_dir / "runs" / "ch1" and deep.is_dir()
    assert runtime.cache_dir("runs/ch1") == deep  # a second call is fine


def test_atomic_write_uses_a_hidden_temporary_file_beside_the_target(tmp_path):
    target = tmp_path / "a" / "b" / "r.txt"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("new")

    runtime.atomic_write(target, write)
    assert seen[0].parent == target.parent and seen[0].name.startswith(".r.txt.")
    assert seen[0].suffix == ".tmp" and not seen[0].exists() and target.read_text() == "new"

    def vanish(tmp):  # the writer removed its file itself: the original error still shows
        tmp.unlink()
        raise RuntimeError("gone")

    with pytest.raises(RuntimeError, match="gone"):
        runtime.atomic_write(target, vanish)


def test_seed_defaults_and_thread_counts(monkeypatch):
    import numpy as np

    runtime.seed_everything()
    a = torch.rand(1), np.random.rand()
    runtime.seed_everything(0)
    assert torch.equal(torch.rand(1), a[0]) and np.random.rand() == a[1]
    runtime.seed_everything(8)
    b = np.random.rand()
    runtime.seed_everything(6)
    assert np.random.rand() != b
    monkeypatch.setenv("FMLAB_THREADS", "1")
    assert runtime.default_threads() == 1


def test_importing_fmlab_leaves_torchs_threads_alone():
    """A student's laptop or Colab keeps torch's default (every core); the grader, the tests
    and the book build choose their thread counts themselves."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FMLAB_THREADS")}
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; before = torch.get_num_threads(); import fmlab; "
         "print(before, torch.get_num_threads())"],
        capture_output=True, text=True, env=env, check=True)
    before, after = probe.stdout.split()
    assert before == after, probe.stdout
