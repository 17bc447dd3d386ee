"""The book build's execution cache: keep it honest, and report what each chapter cost.

    python tools/exec_cache.py check    # before the build: drop the cache if fmlab changed
    python tools/exec_cache.py execute  # run the chapters the cache lacks, two at a time
    python tools/exec_cache.py report   # after the build: each chapter's execution time

Jupyter Book executes a chapter only when its code cells changed (``execute_notebooks: cache``,
jupyter-cache in ``_build/.jupyter_cache``), so a prose-only edit rebuilds in seconds. The
cache knows only the notebook's own code, not the ``fmlab`` package it imports: a changed size
table in ``fmlab/adversarial.py`` would leave chapter 4's old outputs on the page. ``check``
therefore keys the cache on a hash of fmlab's source files, the versions of Python and torch,
and the ``FMLAB_*`` settings of the build, and removes the cache when that key changes, so
every chapter runs again. A fresh clone has no cache and executes everything.

``execute`` runs the chapters whose code is not in the cache before Sphinx starts, one per
core at a time, each kernel with one thread (two threads per kernel on shared cores slow torch
down many times), and stops the build with the failing cell's traceback if one fails. Jupyter
Book then finds every chapter in the cache. Without it the build executes the chapters one
after another.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
KEY_FILE = CACHE.parent / ".jupyter_cache.key"
BUDGET_S = 90  # DESIGN.md: a chapter executes in 90 s or less in the quick profile


def key() -> str:
    """A hash of what a chapter's outputs depend on besides its own code cells."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "fmlab").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    import torch

    h.update(f"{platform.python_version()} {torch.__version__}".encode())
    for name in sorted(os.environ):
        # FMLAB_DATA says only where the data and cached models are kept
        if (name.startswith("FMLAB_") and name != "FMLAB_DATA") or name == "ATEN_CPU_CAPABILITY":
            h.update(f"{name}={os.environ[name]}".encode())
    return h.hexdigest()


def check() -> None:
    new = key()
    old = KEY_FILE.read_text().strip() if KEY_FILE.exists() else None
    if CACHE.exists() and old != new:
        shutil.rmtree(CACHE)
        print("fmlab or the build's settings changed since the last build: every chapter "
              "executes again")
    KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    KEY_FILE.write_text(new + "\n")


def chapters() -> list[Path]:
    """The notebooks the build executes: those _toc.yml names, less execute.exclude_patterns."""
    import fnmatch

    import yaml

    def files(node):
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for value in node.values():
                yield from files(value)
        elif isinstance(node, list):
            for value in node:
                yield from files(value)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    excluded = config.get("execute", {}).get("exclude_patterns", [])
    found = [ROOT / f"{f}.ipynb" for f in files(toc) if (ROOT / f"{f}.ipynb").exists()]
    return [p for p in found
            if not any(fnmatch.fnmatch(str(p.relative_to(ROOT)), pat) for pat in excluded)]


def execute() -> int:
    """Execute the chapters the cache lacks, one per core at a time; 1 if one fails."""
    import yaml
    from jupyter_cache import get_cache
    from jupyter_cache.executors import load_executor

    config = yaml.safe_load((ROOT / "_config.yml").read_text()).get("execute", {})
    cache = get_cache(str(CACHE))
    todo = []
    for path in chapters():
        record = cache.add_nb_to_project(str(path))
        if cache.get_cached_project_nb(record.pk) is None:
            todo.append(str(path))
    if not todo:
        print("every chapter's code is in the execution cache: nothing to execute")
        return 0
    print(f"executing {len(todo)} chapter(s), {os.cpu_count()} at a time: "
          + ", ".join(Path(p).stem for p in todo), flush=True)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FMLAB_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    executor = load_executor("local-parallel", cache)
    result = executor.run_and_cache(filter_uris=todo, timeout=config.get("timeout", 900),
                                    allow_errors=bool(config.get("allow_errors", False)))
    failed = list(result.errored) + list(result.excepted)
    for uri in failed:
        record = cache.get_project_record(uri)
        print(f"\n{Path(uri).relative_to(ROOT)} failed:\n{record.traceback or '(no traceback)'}")
    return 1 if failed else 0


def report() -> int:
    if not CACHE.exists():
        print(f"no execution cache in {CACHE.relative_to(ROOT)}: nothing was executed")
        return 0
    from jupyter_cache import get_cache

    records = {}
    for record in get_cache(str(CACHE)).list_cache_records():
        uri = Path(record.uri)
        seconds = (record.data or {}).get("execution_seconds")
        if seconds is not None and (uri not in records or record.created > records[uri][1]):
            records[uri] = (seconds, record.created)
    print(f"{'notebook':36} {'executed (s)':>12}  when (UTC)")
    for uri, (seconds, created) in sorted(records.items()):
        name = str(uri.relative_to(ROOT)) if uri.is_relative_to(ROOT) else str(uri)
        flag = f"  over the {BUDGET_S} s budget" if seconds > BUDGET_S else ""
        print(f"{name:36} {seconds:12.0f}  {created:%Y-%m-%d %H:%M}{flag}")
    print(f"total {sum(s for s, _ in records.values()):.0f} s of execution (a cached chapter "
          "shows the time of the run that produced it)")
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "check":
        check()
    elif command == "execute":
        sys.exit(execute())
    elif command == "report":
        sys.exit(report())
    else:
        sys.exit("usage: python tools/exec_cache.py check|execute|report")
