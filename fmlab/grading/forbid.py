"""Reference implementations switched off while a student's answer runs.

Explained in book/instructors.md. A question that asks students to write X declares X and the
library's other ways of doing the same job in its checks file::

    Question(id="q1", ..., forbid=("torch.softmax", "torch.nn.functional.softmax",
                                   "torch.Tensor.softmax", "torch.special.softmax"))

While the question's ``run`` executes (in the grading child, and in ``check()`` inside the
notebook), every name listed raises ``RuntimeError("this exercise asks you to write ...
yourself ...")``, wherever the student's code reaches it from:

* a Python function gets a stand-in *code object* for the duration, so aliases saved before
  grading (``my_softmax = F.softmax``) and ``from ... import`` copies break too;
* a class gets stand-in code for each Python method it defines (``__init__``, ``step``,
  ``forward``, ...), so instances, subclasses and aliases of it fail when used;
* a built-in (``torch.softmax``, a ``torch.Tensor`` method, an ``aten`` operator) is caught by
  a :class:`torch.overrides.TorchFunctionMode` that compares each call's function by identity.

Everything is restored when the case ends. :func:`static_problems` adds a check that needs no
call: an answer that *is* a forbidden object, a subclass of one, or whose code names one.

A name ending in ``.*`` stands for every public function and class a module defines
(``"torch.nn.functional.*"``, ``"torchattacks.*"``); :func:`expand` lists them. A name whose top-level
package is not installed forbids nothing (a student cannot call what is not there), so a lab
may forbid an optional library and still load in Colab's bare install; a name inside an
installed package that does not exist is an error in the checks file.
Deliberate obfuscation (rebuilding a function from its bytecode, leaving the torch-function
mode by hand) is not prevented; code review catches it.
"""
from __future__ import annotations

import builtins
import dis
import importlib
import importlib.util
import inspect
import threading
import types
from typing import Iterable

import torch
from torch.overrides import TorchFunctionMode


class ForbiddenReference(RuntimeError):
    """Raised (as a RuntimeError) when an answer calls a reference it was asked to write."""


def resolve(name: str) -> object:
    """The object a dotted name refers to: the longest importable module prefix, then attributes.

    >>> resolve("torch.nn.functional.softmax").__name__
    'softmax'
    """
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise LookupError(f"{name!r} does not exist ({'.'.join(parts[:cut])} has no "
                              f"{'.'.join(parts[cut:])!r})") from None
        return obj
    raise LookupError(f"{name!r}: no importable module at its start")


def installed(name: str) -> bool:
    """Whether the top-level package of the dotted ``name`` can be imported.

    >>> installed("torch.nn.functional.softmax"), installed("no_such_package_here.f")
    (True, False)
    """
    return importlib.util.find_spec(name.split(".")[0]) is not None


def expand(names: Iterable[str]) -> list[str]:
    """``names`` with each ``"module.*"`` replaced by the public functions and classes that
    the module (or a submodule of it) defines, and names from packages that are not installed
    left out; a name that does not exist in an installed package raises LookupError.

    >>> "torch.nn.functional.softmax" in expand(["torch.nn.functional.*"])
    True
    >>> expand(["no_such_package_here.*", "torch.softmax"])
    ['torch.softmax']
    """
    out: list[str] = []
    for name in names:
        if not installed(name):
            continue
        if not name.endswith(".*"):
            resolve(name)
            out.append(name)
            continue
        module = resolve(name[:-2])
        if not isinstance(module, types.ModuleType):
            raise LookupError(f"{name!r}: {name[:-2]} is not a module")
        for attr in sorted(vars(module)):
            value = getattr(module, attr)
            home = getattr(value, "__module__", None) or ""
            if (not attr.startswith("_") and isinstance(value, (type, types.FunctionType))
                    and (home == module.__name__ or home.startswith(module.__name__ + "."))):
                out.append(f"{module.__name__}.{attr}")
    return list(dict.fromkeys(out))


def message(name: str, exercise: str = "this exercise") -> str:
    return (f"{exercise} asks you to write this yourself: {name} is switched off while your "
            "answer is checked")


def _stand_in(fn: types.FunctionType, text: str) -> types.CodeType | None:
    """A code object that raises ``RuntimeError(text)`` and fits ``fn`` (same free variables)."""
    free = fn.__code__.co_freevars
    inner = f"def {fn.__code__.co_name}(*args, **kwargs):\n"
    if free:
        inner += f"    ({', '.join(free)},)\n"
    inner += f"    raise RuntimeError({text!r})\n"
    if free:
        src = "def _outer():\n    " + " = ".join(free) + " = None\n"
        src += "".join("    " + line + "\n" for line in inner.splitlines()) + f"    return {fn.__code__.co_name}\n"
        ns: dict = {}
        exec(compile(src, "<forbidden>", "exec"), ns)
        code = ns["_outer"]().__code__
    else:
        ns = {}
        exec(compile(inner, "<forbidden>", "exec"), ns)
        code = ns[fn.__code__.co_name].__code__
    return code if code.co_freevars == free else None


def _functions_of(obj) -> list[types.FunctionType]:
    """The Python functions whose code runs when ``obj`` is called or used."""
    if isinstance(obj, types.FunctionType):
        return [obj]
    if isinstance(obj, type):
        found = []
        for value in vars(obj).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                value = value.fget
            if isinstance(value, types.FunctionType):
                found.append(value)
        return found
    if isinstance(obj, types.MethodType) and isinstance(obj.__func__, types.FunctionType):
        return [obj.__func__]
    return []


class _Block(TorchFunctionMode):
    def __init__(self, natives: dict[int, str], exercise: str):
        super().__init__()
        self.natives, self.exercise = natives, exercise

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        name = self.natives.get(id(func))
        if name is None:
            name = self.natives.get(id(getattr(func, "overloadpacket", None)))
        if name is not None:
            raise ForbiddenReference(message(name, self.exercise))
        return func(*args, **(kwargs or {}))


class blocked:
    """``with blocked(names, "q1"):`` switches the named references off (see the module doc)."""

    def __init__(self, names: Iterable[str], exercise: str = "this exercise"):
        self.names = tuple(expand(names))
        self.exercise = exercise
        self._swapped: list[tuple[types.FunctionType, types.CodeType]] = []
        self._mode: _Block | None = None
        self._thread_run = None

    def __enter__(self):
        natives: dict[int, str] = {}
        try:
            for name in self.names:
                obj = resolve(name)
                functions = _functions_of(obj)
                for fn in functions:
                    code = _stand_in(fn, message(name, self.exercise))
                    if code is None:
                        continue
                    self._swapped.append((fn, fn.__code__))
                    fn.__code__ = code
                if not functions or isinstance(obj, type):
                    natives[id(obj)] = name  # builtins, and classes torch may dispatch on
            if natives:
                self._mode = _Block(natives, self.exercise)
                self._mode.__enter__()
                # torch's function mode holds for the thread that entered it: a thread the
                # answer starts enters its own (one started before the case is not covered;
                # the grader's source scan flags threads)
                self._thread_run = run = threading.Thread.run
                exercise = self.exercise

                def run_blocked(thread):
                    with _Block(natives, exercise):
                        run(thread)

                threading.Thread.run = run_blocked
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self):
        while self._swapped:
            fn, code = self._swapped.pop()
            fn.__code__ = code

    def __exit__(self, *exc):
        try:
            if self._mode is not None:
                self._mode.__exit__(*exc)
                self._mode = None
        finally:
            if self._thread_run is not None:
                threading.Thread.run, self._thread_run = self._thread_run, None
            self._restore()
        return False


def forbidden_ids(names: Iterable[str]) -> dict[int, str]:
    """``id`` of each object ``names`` forbid (``.*`` expanded), to its dotted name."""
    return {id(resolve(name)): name for name in expand(names)}


def static_problems(value, names: Iterable[str], exercise: str = "this exercise") -> list[str]:
    """Why ``value`` (an answer from the student's namespace) is a forbidden reference, if it is.

    Catches the answer being a forbidden object or a subclass of one, and code whose globals
    name one or a subclass of one (``return F.softmax(z, dim)``, ``from torch.nn.functional
    import softmax``, ``MyConv(...)`` where ``class MyConv(nn.Conv2d)``).
    """
    forbidden = forbidden_ids(names)
    problems = []
    if id(value) in forbidden:
        return [message(forbidden[id(value)], exercise) + " (your answer is that function)"]
    if isinstance(value, type):
        for base in inspect.getmro(value)[1:]:
            if id(base) in forbidden:
                problems.append(message(forbidden[id(base)], exercise) + " (your class inherits from it)")
    for fn in _functions_of(value) if isinstance(value, (type, types.FunctionType)) else []:
        problems += _names_in_code(fn, forbidden, exercise)
    return sorted(set(problems))


def _names_in_code(fn: types.FunctionType, forbidden: dict[int, str], exercise: str) -> list[str]:
    """Forbidden objects that ``fn``'s code loads from its globals, directly (``softmax``), through
    attributes (``F.softmax``, ``torch.nn.Conv2d``) or as a class that inherits one, read from
    the bytecode."""
    problems = []
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        base = None
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                base = fn.__globals__.get(ins.argval, getattr(builtins, ins.argval, None))
                if base is not None and id(base) in forbidden:
                    problems.append(message(forbidden[id(base)], exercise))
                elif isinstance(base, type):  # a class of the notebook's that inherits one
                    problems += [message(forbidden[id(b)], exercise) + f" ({ins.argval} inherits from it)"
                                 for b in inspect.getmro(base)[1:] if id(b) in forbidden]
            elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and base is not None:
                sub = getattr(base, ins.argval, None) if isinstance(base, (types.ModuleType, type)) else None
                if sub is not None and id(sub) in forbidden:
                    problems.append(message(forbidden[id(sub)], exercise))
                base = sub
            else:
                base = None
    return problems
