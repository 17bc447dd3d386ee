"""Run every chapter and master lab in the full profile on this machine's GPU; write a table.

    make gpu                                              # on a machine with CUDA
    python benchmarks/full_profile.py                     # the same
    python benchmarks/full_profile.py --smoke --out /tmp/r.md book/02_losses.ipynb

Each notebook executes with ``FMLAB_PROFILE=full`` on the accelerator (the profile picks
CUDA by itself). The script writes ``benchmarks/RESULTS_gpu.md``: the device's name, each
notebook's wall time and whether it ran to the end (the first error if not), and every number
a chapter records (``fmlab.results.record``) beside the quick profile's value from the last
``make book`` (read from its execution cache, ``_build/.jupyter_cache``; "—" where there is
none). The runs continue past a failing notebook, so one failure does not lose the others.

On a machine without CUDA it refuses, unless ``--smoke``: the full profile's code paths with
a token amount of work (``FMLAB_SMOKE=1``) on the CPU, which the tests run.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLUE = "application/papermill.record/"


def recorded(nb) -> dict[str, float]:
    """The numbers a notebook's outputs carry from ``fmlab.results.record``."""
    values = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                try:
                    values[name] = float(out["data"].get(GLUE + "text/plain"))
                except (TypeError, ValueError):
                    pass
    return values


def quick_numbers() -> dict[str, dict[str, float]]:
    """Per notebook file name, the numbers of the last quick-profile book build."""
    cache = ROOT / "_build" / ".jupyter_cache"
    if not cache.exists():
        return {}
    from jupyter_cache import get_cache

    out: dict[str, dict[str, float]] = {}
    latest: dict[str, object] = {}
    c = get_cache(str(cache))
    for record in c.list_cache_records():
        name = Path(record.uri).name
        if name not in latest or record.created > latest[name]:
            latest[name] = record.created
            out[name] = recorded(c.get_cache_bundle(record.pk).nb)
    return out


def execute(path: Path, timeout: int) -> tuple[object, float, str | None]:
    """Run one notebook; (executed notebook, wall seconds, first error or None)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return nb, seconds, f"cell {i}: {out['ename']}: {out['evalue'][:200]}"
    return nb, seconds, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, nargs="*",
                        help="default: every chapter (book/) and master lab (labs/)")
    parser.add_argument("--smoke", action="store_true",
                        help="the full profile's code paths with token work, on the CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_gpu.md")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device here: the full profile is meant for a GPU (run this on one), or "
              "add --smoke to run its code paths with a token amount of work on the CPU",
              file=sys.stderr)
        return 2
    notebooks = args.notebooks or (sorted(ROOT.glob("book/*.ipynb"))
                                   + sorted(ROOT.glob("labs/*.ipynb")))
    os.environ["FMLAB_PROFILE"] = "full"
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.smoke:
        os.environ.update({"FMLAB_SMOKE": "1", "FMLAB_DEVICE": "cpu"})
        device = f"CPU ({platform.processor() or platform.machine()}), smoke size"
    else:
        device = torch.cuda.get_device_name(0)
    quick = quick_numbers()
    rows, numbers, failures = [], [], 0
    for path in notebooks:
        path = path.resolve()
        nb, seconds, error = execute(path, args.timeout)
        failures += error is not None
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        rows.append(f"| `{name}` | {seconds:.0f} | {'ran to the end' if not error else error} |")
        print(f"{name}: {seconds:.0f} s, {'ok' if not error else error}", flush=True)
        q = quick.get(path.name, {})
        for key, value in recorded(nb).items():
            old = q.get(key)
            numbers.append(f"| `{path.name}` | `{key}` | {'—' if old is None else f'{old:.4g}'} "
                           f"| {value:.4g} |")
    text = "\n".join([
        "# The full profile on an accelerator",
        "",
        f"Device: {device}; torch {torch.__version__}, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; command: `python benchmarks/full_profile.py"
        f"{' --smoke' if args.smoke else ''}`. Where the full datasets could not be fetched "
        "(no network), the notebooks say so and use the embedded data.",
        "",
        "| notebook | wall time (s) | result |",
        "|---|---|---|",
        *rows,
        "",
        "## Recorded numbers: quick profile (last `make book` here) and full profile",
        "",
        "| notebook | number | quick | full |",
        "|---|---|---|---|",
        *numbers,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
