"""The examples in fmlab's docstrings run and print what they say (doctest).

Every module of the package is searched, so a new example runs without being listed here.
Examples are kept small (tiny data, a second or two each).
"""
import doctest
import importlib
import pkgutil

import pytest
import torch

import fmlab

MODULES = sorted(m.name for m in pkgutil.walk_packages(fmlab.__path__, "fmlab.")
                 if not m.name.endswith("__main__"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# The functions readers call most: each must show an example that runs.
MUST_HAVE_EXAMPLES = [
    "fmlab.train.fit", "fmlab.train.evaluate", "fmlab.train.train_one_epoch",
    "fmlab.data.load", "fmlab.adversarial.fgsm", "fmlab.adversarial.pgd",
    "fmlab.adversarial.robust_accuracy", "fmlab.losses.mse", "fmlab.losses.bce_with_logits",
    "fmlab.losses.cross_entropy",
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, capsys):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, report=True)
    report = capsys.readouterr().out
    assert result.failed == 0, report


@pytest.mark.parametrize("dotted", MUST_HAVE_EXAMPLES)
def test_main_functions_show_an_example(dotted):
    module, _, name = dotted.rpartition(".")
    doc = getattr(importlib.import_module(module), name).__doc__ or ""
    finder = doctest.DocTestFinder(recurse=False)
    examples = [e for t in finder.find(getattr(importlib.import_module(module), name), name)
                for e in t.examples]
    assert ">>>" in doc and examples, f"{dotted} has no example in its docstring"
