"""How a lab's questions are written down: the format of ``labs/checks/<lab>.py``.

Explained for instructors in book/instructors.md.

A checks file is trusted instructor code. It defines ``QUESTIONS``, a list of
:class:`Question`. Each question splits its work in two halves that run in different
processes when CI grades a submission:

* ``run(ns, case)`` runs in the **child**, next to the student's code. ``ns`` is the namespace
  the student's notebook built; ``case`` is a dict of plain data the parent chose. It calls the
  student's function and returns plain data only (tensors, numbers, strings, lists, dicts).
* ``grade(case, got)`` runs in the **parent**. It computes the reference itself and returns a
  :class:`Result`. The student's code never sees it, and ``got`` is always plain data.

``cases()`` returns the public cases (a list of dicts of plain data). A hidden-tests folder
holds a file of the same name that defines ``HIDDEN = {"q1": [case, ...], ...}``: more cases
for the same questions, run through the same ``run`` and ``grade``. A case may carry a
``"name"`` key, which messages quote. ``run`` and ``grade`` each start from the same seeded
random state (see :class:`seeded`). An optional ``prepare(case)`` makes a case's inputs in
the parent (loading data the child may not read, initial weights); see :class:`Question`.

A checks module also declares what its lab needs, and the grading engine reads it (it knows
no particular lab):

* ``MODULES = ("captum.attr", ...)``: modules the child imports before the student's code runs;
* ``DATA = (name, ...)``: the datasets (names of :func:`fmlab.data.load`) whose files the
  student's code may read itself while it is graded. The files of every other dataset, and the
  data cache, are out of its reach; a question hands it the inputs it needs with ``prepare``;
* ``PRIVATE = ("../*.ipynb", ...)``: glob patterns, relative to the checks file's folder, of
  files the student's code may not read, such as the master notebooks with their solutions;
* ``PROCESSES = True``: its cases start processes that talk to each other over 127.0.0.1. The
  grader allows that only behind a kernel boundary (a child with namespaces has a loopback
  interface of its own); where it has none, it refuses to grade the lab and says what to do.
"""
from __future__ import annotations

import importlib.util
import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

Data = Any  # tensors, numbers, str, None, and lists/tuples/dicts of those


@dataclass
class Result:
    """The outcome of one case: ``score`` in [0, 1] and a message that explains it.

    ``scale=True`` marks a score read off a scale (a trained model's accuracy between two
    bounds, :func:`fmlab.grading.trained.score_between`): part of it is a weaker result, not a
    wrong one. Any other case that scores below 1 found a mistake, and its question keeps at
    most half its points (:func:`fmlab.grading.report.share`)."""

    score: float
    message: str = ""
    scale: bool = False

    @property
    def passed(self) -> bool:
        return self.score >= 1.0

    @classmethod
    def ok(cls, message: str = "ok") -> "Result":
        return cls(1.0, message)

    @classmethod
    def fail(cls, message: str) -> "Result":
        return cls(0.0, message)


@dataclass
class Question:
    """One graded exercise. See the module docstring for who runs what."""

    id: str
    points: float
    title: str
    requires: tuple[str, ...]
    run: Callable[[dict, dict], Data]
    grade: Callable[[dict, Data], Result]
    cases: Callable[[], list[dict]]
    timeout: float = 30.0  # CPU seconds per case, in the child (see fmlab.grading.runner)
    # Dotted names of the references this exercise asks students to write themselves (and the
    # library's other ways of doing the same job): switched off while ``run`` executes, see
    # fmlab/grading/forbid.py.
    forbid: tuple[str, ...] = ()
    # prepare(case) -> case with its inputs made (e.g. training images loaded). It runs where
    # the case is chosen: in the parent when grading, so the child gets data it cannot read
    # itself; run(ns, prepared) and grade(prepared, got) both see the prepared case.
    prepare: Callable[[dict], dict] | None = None

    def prepared(self, case: dict) -> dict:
        if self.prepare is None:
            return case
        with seeded():
            return self.prepare(dict(case))


CASE_SEED = 0


_SEEDED_LOCK = threading.RLock()


class seeded:
    """``with seeded():`` runs a case's ``run`` or ``grade`` from the same random state on both
    sides (torch, NumPy, ``random`` seeded with :data:`CASE_SEED`), whatever ran before it, and
    restores the caller's random state afterwards. So dropout masks or random starts drawn in
    ``run`` (child) and in ``grade`` (parent) agree when both draw in the same order.

    The random generators are the process's own, so one thread at a time holds them: under
    ``--jobs`` the parent prepares and grades several submissions in threads, and one thread's
    draws must not land in another's stream (a reference model built from another case's seed)."""

    def __enter__(self):
        import random

        import numpy as np

        _SEEDED_LOCK.acquire()
        self._states = (torch.random.get_rng_state(), np.random.get_state(), random.getstate())
        torch.manual_seed(CASE_SEED)
        np.random.seed(CASE_SEED)
        random.seed(CASE_SEED)

    def __exit__(self, *exc):
        import random

        import numpy as np

        torch_state, np_state, py_state = self._states
        try:
            torch.random.set_rng_state(torch_state)
            np.random.set_state(np_state)
            random.setstate(py_state)
        finally:
            _SEEDED_LOCK.release()


def case_name(case: dict, index: int) -> str:
    return str(case.get("name", f"case {index + 1}"))


def load_module(path: str | Path, name: str | None = None):
    """Import a checks or hidden-tests file by path (their names start with digits)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checks file at {path}")
    mod_name = name or f"fmlab_checks_{path.stem.replace('-', '_')}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def load_questions(path: str | Path, module=None) -> list[Question]:
    module = module or load_module(path)
    questions = getattr(module, "QUESTIONS", None)
    if not questions or not all(isinstance(q, Question) for q in questions):
        raise ValueError(f"{path} must define QUESTIONS, a non-empty list of fmlab.grading.Question")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate question ids in {ids}")
    from .forbid import expand

    for q in questions:
        try:
            expand(q.forbid)
        except LookupError as err:
            raise ValueError(f"{path}: {q.id}'s forbid names a reference that does not exist: {err}") from None
    return questions


def declared(module, path: str | Path = "the checks file") -> tuple[tuple[str, ...], ...]:
    """The ``MODULES``, ``DATA`` and ``PRIVATE`` a checks module declares (see the module
    docstring)."""
    from fmlab.data import CACHED, NAMES

    modules, data = tuple(getattr(module, "MODULES", ())), tuple(getattr(module, "DATA", ()))
    private = tuple(getattr(module, "PRIVATE", ()))
    for name, value, what in (("MODULES", modules, "module names"),
                              ("PRIVATE", private, "glob patterns")):
        if not all(isinstance(m, str) for m in value):
            raise ValueError(f"{path}: {name} must be a tuple of {what}")
    unknown = [d for d in data if d not in NAMES]
    if unknown:
        raise ValueError(f"{path}: DATA names {unknown}, which fmlab.data does not have "
                         f"(it has {', '.join(NAMES)})")
    cached = [d for d in data if d in CACHED]
    if cached:  # the child's data cache is its own, empty folder
        raise ValueError(f"{path}: DATA names {cached}, which live in the data cache; the graded "
                         "code cannot download or read them: hand their images in with prepare")
    return modules, data, private


def needs_processes(module, path: str | Path = "the checks file") -> bool:
    """Whether a checks module declares ``PROCESSES = True`` (see the module docstring)."""
    value = getattr(module, "PROCESSES", False)
    if type(value) is not bool:
        raise ValueError(f"{path}: PROCESSES must be True or False")
    return value


# ---------------------------------------------------------------------------------------------
# Plain data: what may cross from the child to the parent.
# ---------------------------------------------------------------------------------------------

class NotData(TypeError):
    """A value that is not plain data (it could carry code or lie about equality)."""


def to_data(value: Any, _depth: int = 0) -> Data:
    """Convert a student's return value to plain data, or raise :class:`NotData`.

    Tensors are detached and moved to the CPU (their dtype is kept, so graders can check it).
    ``nn.Module`` results must be turned into ``state_dict()`` by the question's ``run``.
    Only exact built-in types pass: a subclass of ``float`` or ``list`` could override ``__eq__``.
    """
    if _depth > 20:
        raise NotData("nested more than 20 levels deep")
    t = type(value)
    if value is None or t in (bool, int, float, str):
        return value
    if t is torch.Tensor or t is torch.nn.Parameter:
        return value.detach().to("cpu").clone()
    if t in (list, tuple):
        return t(to_data(v, _depth + 1) for v in value)
    if t is dict or t.__name__ == "OrderedDict" and isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if type(k) not in (str, int):
                raise NotData(f"dict key of type {type(k).__name__}; use str or int keys")
            out[k] = to_data(v, _depth + 1)
        return out
    if t.__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if t.__module__ == "numpy" and t.__name__ == "ndarray":
        return torch.from_numpy(value.copy())
    raise NotData(f"a value of type {t.__module__}.{t.__qualname__}, which is not plain data")


def describe(value: Data) -> str:
    """A short description for messages: type, shape, dtype."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:200]


# ---------------------------------------------------------------------------------------------
# Comparators: parent-side checks that explain what differs.
# ---------------------------------------------------------------------------------------------

def expect_close(got: Data, expected: torch.Tensor, *, atol: float = 1e-6, rtol: float = 1e-5,
                 check_dtype: bool | None = None, what: str = "the result") -> Result:
    """Pass when ``got`` is a tensor of the expected shape within tolerance.

    ``check_dtype``: ``True`` where the lab states the dtype (it must then match exactly);
    ``None``, the default, where it does not: any floating dtype stands for a floating one
    (a value accumulated in float64 is as right as one in float32), any other dtype must
    match; ``False``: any dtype, converted to the expected one."""
    if not isinstance(expected, torch.Tensor):
        expected = torch.as_tensor(expected)
    if isinstance(got, (int, float)) and not isinstance(got, bool) and expected.numel() == 1:
        got = torch.tensor(got, dtype=expected.dtype)
    if not isinstance(got, torch.Tensor):
        return Result.fail(f"{what} should be a tensor of shape {tuple(expected.shape)}, got {describe(got)}")
    if tuple(got.shape) != tuple(expected.shape):
        if got.numel() == expected.numel() == 1:
            got = got.reshape(expected.shape)
        else:
            return Result.fail(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    either_float = got.dtype.is_floating_point and expected.dtype.is_floating_point
    if got.dtype != expected.dtype and (check_dtype or (check_dtype is None and not either_float)):
        return Result.fail(f"{what} has dtype {got.dtype}, expected {expected.dtype}")
    if not got.dtype.is_floating_point and expected.dtype.is_floating_point:
        got = got.to(expected.dtype)
    g, e = got.double(), expected.double()
    if not torch.isfinite(g).all() and torch.isfinite(e).all():
        bad = (~torch.isfinite(g)).sum().item()
        return Result.fail(f"{what} has {bad} non-finite value(s) (nan or inf); expected all finite")
    if torch.allclose(g, e, atol=atol, rtol=rtol, equal_nan=True):
        return Result.ok()
    diff = (g - e).abs()
    idx = int(diff.flatten().nan_to_num(math.inf).argmax())
    return Result.fail(
        f"{what} differs: largest error {diff.flatten()[idx].item():.3g} at flat index {idx} "
        f"(got {g.flatten()[idx].item():.6g}, expected {e.flatten()[idx].item():.6g}; "
        f"tolerance atol={atol:g}, rtol={rtol:g})"
    )


def expect_equal(got: Data, expected: Data, what: str = "the result") -> Result:
    """Exact equality of plain data (tuples and lists are interchangeable)."""
    def norm(v):
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, torch.Tensor):
            return v.tolist()
        return v

    if type(got) is bool or type(expected) is bool:
        same = type(got) is type(expected) and got == expected
    else:
        same = norm(got) == norm(expected)
    return Result.ok() if same else Result.fail(f"{what}: got {describe(got)}, expected {expected!r}")


def expect_state_dict(got: Data, model: torch.nn.Module, what: str = "the returned weights") -> Result:
    """Load ``got`` into ``model`` (the reference architecture), strictly; fail with a reason."""
    if not isinstance(got, dict) or not all(isinstance(v, torch.Tensor) for v in got.values()):
        return Result.fail(f"{what} should be a state_dict (a dict of tensors), got {describe(got)}")
    try:
        model.load_state_dict(got, strict=True)
    except (RuntimeError, KeyError) as err:
        return Result.fail(f"{what} do not fit the reference architecture: {str(err).splitlines()[0]}")
    if not all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point()):
        return Result.fail(f"{what} contain nan or inf")
    return Result.ok()
