"""What the grader reads in a submission's source, in its own process, before any of it runs.

Explained in book/instructors.md. The child's runtime blocking (:mod:`fmlab.grading.forbid`)
runs where the student's code runs, so that code can switch it off; this scan cannot be
touched. For each question it reads the functions and classes the question calls
(``requires``) and every function and class of the notebook they name, transitively, and:

* fails the question where that code names a forbidden reference directly: through the
  notebook's imports and top-level aliases (``F.softmax``, ``from torch.nn.functional import softmax``,
  ``sm = torch.softmax``, ``class MyConv(nn.Conv2d)``), compared by identity with what the
  question forbids;
* flags it for a person where the code does what a scan cannot follow: ``__wrapped__``, stack
  frames, writes to file descriptors it did not open, the grading package, and dynamic code
  (``eval``, ``exec``, ``compile``, ``__import__``, ``importlib``, ``getattr`` with a computed
  name), and, for the notebook as a whole, threads of its own (:func:`notebook_flags`). A flag
  changes no score; it reaches the instructor only (the gradebook, and with ``--show-hidden``
  the table and ``results.json``'s ``extra_data``).

Only names inside the packages a question forbids are ever imported here: nothing the student
wrote is imported or run in the grader's process.
"""
from __future__ import annotations

import ast
import threading
from dataclasses import dataclass, field

from .forbid import forbidden_ids, message, resolve

DYNAMIC = {"eval", "exec", "compile", "__import__", "importlib"}
FRAMES = {"_getframe", "currentframe", "stack", "getouterframes", "f_back", "f_globals",
          "f_locals", "f_builtins", "tb_frame"}
FD_WRITES = {"os.write", "os.writev", "os.dup", "os.dup2", "os.fdopen", "os.pwrite",
             "os.sendfile"}


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)  # direct uses: the question fails
    flags: list[str] = field(default_factory=list)  # for a person to look at


# CPython 3.11's parser keeps its recursion depth in shared state: two threads parsing at once
# (fmlab grade --jobs 2 grades in threads) can fail with "SystemError: AST constructor recursion
# depth mismatch". One parse at a time.
_PARSING = threading.Lock()


def _parse(cells: list[str]) -> list[ast.stmt]:
    body: list[ast.stmt] = []
    for src in cells:
        try:
            with _PARSING:
                body += ast.parse(src).body
        except (SyntaxError, ValueError):
            continue  # the cell does not run either; the child says so
    return body


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


class Notebook:
    """The notebook's statements (parsed once), its top-level definitions and the names its
    imports and aliases stand for."""

    def __init__(self, cells: list[str]):
        self.body = _parse(cells)
        self.defs: dict[str, ast.AST] = {}
        self.aliases: dict[str, str] = {}
        for stmt in self.body:
            self._top(stmt)

    def _top(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.defs[stmt.name] = stmt
            self.aliases.pop(stmt.name, None)
        elif isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.asname:
                    self.aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    self.aliases[top] = top
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for a in stmt.names:
                self.aliases[a.asname or a.name] = f"{stmt.module}.{a.name}"
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, dotted = stmt.targets[0], _dotted(stmt.value)
            if isinstance(target, ast.Name):
                if dotted is not None and dotted.split(".")[0] in self.defs:
                    self.defs[target.id] = self.defs[dotted.split(".")[0]]
                elif dotted is not None:
                    self.aliases[target.id] = self.full(dotted) or dotted
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for inner in ast.iter_child_nodes(stmt):
                if isinstance(inner, ast.stmt):
                    self._top(inner)

    def full(self, dotted: str) -> str | None:
        """``F.softmax`` as ``torch.nn.functional.softmax``, through the notebook's imports."""
        head, _, rest = dotted.partition(".")
        base = self.aliases.get(head)
        if base is None:
            return None
        return f"{base}.{rest}" if rest else base

    def reachable(self, names: tuple[str, ...]) -> list[ast.AST]:
        """The definitions of ``names`` and of every notebook definition they name."""
        seen: dict[str, ast.AST] = {}
        todo = [n for n in names if n in self.defs]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen[name] = self.defs[name]
            for node in ast.walk(self.defs[name]):
                if isinstance(node, ast.Name) and node.id in self.defs and node.id not in seen:
                    todo.append(node.id)
        return list(dict.fromkeys(seen.values()))


def _lookup(dotted: str, packages: set[str]) -> list[object]:
    """The objects ``dotted`` passes through (``torch``, ``torch.nn``, ``torch.nn.Conv2d``),
    for names inside ``packages`` only."""
    parts = dotted.split(".")
    if parts[0] not in packages:
        return []
    objects = []
    for cut in range(1, len(parts) + 1):
        try:
            objects.append(resolve(".".join(parts[:cut])))
        except Exception:  # noqa: BLE001 - a name that is not there, or fails to import
            break
    return objects


def _subclasses_forbidden(obj, forbidden: dict[int, str]) -> str | None:
    if not isinstance(obj, type):
        return None
    for base in obj.__mro__[1:]:
        if id(base) in forbidden:
            return forbidden[id(base)]
    return None


def scan(nb: Notebook, requires: tuple[str, ...], forbid: tuple[str, ...],
         exercise: str) -> Findings:
    """What the code of ``requires`` (and what it names) does, read from the notebook."""
    findings = Findings()
    forbidden = forbidden_ids(forbid)
    packages = {name.split(".")[0] for name in forbidden.values()}
    for definition in nb.reachable(requires):
        for node in ast.walk(definition):
            dotted = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else None
            full = nb.full(dotted) if dotted else None
            for obj in _lookup(full, packages) if full else []:
                name = forbidden.get(id(obj)) or _subclasses_forbidden(obj, forbidden)
                if name:
                    findings.problems.append(message(name, exercise) + f" (your code names {dotted})")
                    break
            _flag(node, nb, findings)
    findings.problems = list(dict.fromkeys(findings.problems))
    findings.flags = list(dict.fromkeys(findings.flags))
    return findings


THREADS = {"threading", "_thread", "concurrent"}


def notebook_flags(nb: Notebook) -> list[str]:
    """What the whole notebook does that no question's scan covers: threads. The runtime block
    covers the threads an answer starts while its case runs; one started earlier by a cell,
    waiting for work, is not."""
    flags = []
    for stmt in nb.body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            flags += [f"starts threads of its own ({m}, line {node.lineno} of its cell)"
                      for m in modules if m.split(".")[0] in THREADS]
    return list(dict.fromkeys(flags))


def _flag(node: ast.AST, nb: Notebook, findings: Findings) -> None:
    where = f"line {getattr(node, 'lineno', '?')}"
    if isinstance(node, ast.Attribute):
        if node.attr == "__wrapped__":
            findings.flags.append(f"reads __wrapped__, the original of a decorated function ({where})")
        elif node.attr in FRAMES:
            findings.flags.append(f"inspects stack frames ({node.attr}, {where})")
    if isinstance(node, (ast.Attribute, ast.Name)):
        dotted = _dotted(node)
        full = (nb.full(dotted) or dotted) if dotted else ""
        if full.startswith("fmlab.grading") or full.startswith("fmlab.checks"):
            findings.flags.append(f"uses the grading package ({dotted}, {where})")
        elif full in FD_WRITES:
            findings.flags.append(f"writes to a file descriptor ({dotted}, {where})")
        elif full.split(".")[0] == "importlib" or (isinstance(node, ast.Name) and node.id in DYNAMIC
                                                   and node.id not in nb.defs):
            findings.flags.append(f"runs code it builds ({dotted}, {where})")
        elif dotted and dotted.split(".")[0] in {"gc", "ctypes"} and dotted.split(".")[0] in nb.aliases:
            findings.flags.append(f"reaches objects by other means ({dotted}, {where})")
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr") and len(node.args) >= 2
            and not isinstance(node.args[1], ast.Constant)):
        findings.flags.append(f"{node.func.id} with a computed name ({where})")
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for module in modules:
            if module.split(".")[0] in {"importlib", "ctypes", "gc", "inspect"} or module.startswith("fmlab.grading"):
                findings.flags.append(f"imports {module} inside the exercise ({where})")
