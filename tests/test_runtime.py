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
