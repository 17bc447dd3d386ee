"""Run a chapter under several seeds and CPU kernel sets; report every asserted quantity's margin.

    python benchmarks/seeds.py book/06_explanation.ipynb            # seeds 0-2, 3 kernel sets
    python benchmarks/seeds.py book/04_adversarial.ipynb --seeds 0 --kernels native
    python benchmarks/seeds.py book/*.ipynb --jobs 2                # every chapter, 2 at a time

A chapter has to hold wherever the course runs: for other seeds, and on other CPUs, which
round differently (``ATEN_CPU_CAPABILITY=avx2`` or ``default`` makes torch use another kernel
set, as a student's laptop or a GitHub runner would). Each run executes the whole notebook
(quick profile unless ``FMLAB_PROFILE`` says otherwise, one thread, on the CPU) with
``FMLAB_SEED`` set; a chapter derives every seed it uses from it (:func:`fmlab.runtime.base_seed`).
The runs are: every seed with the machine's own kernels, and the first seed under each other
kernel set.

Before a run, every ``assert`` in the notebook's code is rewritten so that each comparison in
it (``a < b``, ``0.4 < x < 0.8``, a comparison inside ``all(...)``) records its operands and
its margin: how far the comparison is from failing, in the units of the compared quantity
(for ``x >= 0.95`` with x = 0.97 the margin is 0.02; the smallest over the elements of a
tensor or over the items of ``all(...)``). A negative margin is a failed comparison.
Assertions without a comparison (``torch.equal``, ``allclose``, a set equality) are exact
checks and are reported as passed or failed. The runs continue past errors, so a failing
assertion is reported, not fatal.

For each chapter it writes ``benchmarks/seeds_<chapter>.md``: each comparison's value per
run, its worst margin, and the spread of its value across the runs; a comparison whose worst
margin is less than twice that spread is marked **thin** (a claim to change, not a threshold
to move). Also the numbers the chapter records with ``fmlab.results.record``, the exact
checks, any error, and each run's kernel CPU time.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from full_profile import recorded as recorded_numbers  # noqa: E402  (benchmarks/full_profile.py)

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("native", "avx2", "default")

# The helper every rewritten assertion calls. It evaluates the comparison exactly as Python
# would (same operands, same result object) and records the margin of each link of a chain.
CLAIM_HELPER = r'''
def __fmlab_claim__(cid, ops, *operands):
    import operator, math
    fns = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
           "==": operator.eq, "!=": operator.ne}
    def number(v):
        try:
            import numpy as np
            if hasattr(v, "detach"):
                v = v.detach().cpu().double().numpy()
            a = np.asarray(v, dtype=float)
            return a if a.size else None
        except Exception:
            return None
    result = None
    for i, op in enumerate(ops):
        a, b = operands[i], operands[i + 1]
        r = fns[op](a, b)
        na, nb = number(a), number(b)
        entry = __fmlab_claims__.setdefault(cid, {"margin": math.inf, "value": None,
                                                  "bound": None, "calls": 0})
        entry["calls"] += 1
        if op in ("<", "<=", ">", ">=") and na is not None and nb is not None:
            import numpy as np
            m = (nb - na) if op in ("<", "<=") else (na - nb)
            k = int(np.argmin(np.broadcast_to(m, np.broadcast(na, nb).shape)))
            worst = float(np.min(m))
            if worst < entry["margin"] or entry["value"] is None:
                entry["margin"] = worst
                entry["value"] = float(np.broadcast_to(na, np.broadcast(na, nb).shape).flat[k])
                entry["bound"] = float(np.broadcast_to(nb, np.broadcast(na, nb).shape).flat[k])
        else:
            entry["margin"] = None
        result = r if result is None else (result and r)
    return result
__fmlab_claims__ = {}
'''

OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


class _Rewrite(ast.NodeTransformer):
    """Wrap each comparison inside an assert's test in a call to the claim helper."""

    def __init__(self, cell: int, source: str):
        self.cell, self.source, self.claims = cell, source, []
        self._assert = None

    def visit_Assert(self, node: ast.Assert):
        self._assert = node
        node.test = self.visit(node.test)
        self._assert = None
        if not any(c["assert_line"] == node.lineno for c in self.claims):
            self.claims.append({"id": f"c{self.cell}_{node.lineno}_exact", "cell": self.cell,
                                "assert_line": node.lineno, "kind": "exact",
                                "text": ast.get_source_segment(self.source, node) or ""})
        return node

    def visit_comprehension(self, node: ast.comprehension):
        # a comparison in a comprehension's `if` filters items: it is no claim
        node.iter = self.visit(node.iter)
        return node

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        if self._assert is None or not all(type(op) in OPS for op in node.ops):
            return node
        cid = f"c{self.cell}_{node.lineno}_{node.col_offset}"
        self.claims.append({
            "id": cid, "cell": self.cell, "assert_line": self._assert.lineno,
            "kind": "compare", "text": ast.get_source_segment(self.source, node) or "",
            "assert": (ast.get_source_segment(self.source, self._assert) or "")})
        call = ast.Call(
            func=ast.Name("__fmlab_claim__", ast.Load()),
            args=[ast.Constant(cid), ast.Tuple([ast.Constant(OPS[type(op)]) for op in node.ops],
                                               ast.Load()),
                  node.left, *node.comparators],
            keywords=[])
        return ast.copy_location(call, node)


def instrument(nb) -> list[dict]:
    """Rewrite the asserts of ``nb``'s code cells in place; return the claims found."""
    from IPython.core.inputtransformer2 import TransformerManager

    claims = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "assert" not in cell.source:
            continue
        try:
            src = TransformerManager().transform_cell(cell.source)
            tree = ast.parse(src)
        except SyntaxError:
            continue
        rewrite = _Rewrite(i, src)
        tree = ast.fix_missing_locations(rewrite.visit(tree))
        cell.source = ast.unparse(tree)
        claims += rewrite.claims
    return claims


def run(path: str, seed: int, kernel: str, timeout: int) -> dict:
    """Execute the instrumented notebook once; return its claims, numbers, errors and times."""
    import nbformat
    from nbclient import NotebookClient

    env = {"FMLAB_SEED": str(seed), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "FMLAB_THREADS": "1", "FMLAB_DEVICE": "cpu", "MPLBACKEND": "Agg"}
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
    else:
        os.environ.pop("ATEN_CPU_CAPABILITY", None)
    os.environ.update(env)
    nb = nbformat.read(path, as_version=4)
    claims = instrument(nb)
    out = Path(tempfile.mkdtemp()) / "claims.json"
    nb.cells.insert(0, nbformat.v4.new_code_cell(CLAIM_HELPER))
    nb.cells.append(nbformat.v4.new_code_cell(
        f"import json\nopen({str(out)!r}, 'w').write(json.dumps(__fmlab_claims__))"))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(Path(path).parent)}})
    before, t0 = os.times(), time.perf_counter()
    client.execute()
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    errors = [f"cell {i}: {o['ename']}: {o['evalue'][:300]}"
              for i, cell in enumerate(nb.cells[1:-1]) for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    margins = json.loads(out.read_text()) if out.exists() else {}
    return {"seed": seed, "kernel": kernel, "claims": claims, "recorded": margins,
            "values": recorded_numbers(nb), "errors": errors, "cpu": cpu, "wall": wall}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.4g}"


def report(path: Path, runs: list[dict], profile: str) -> str:
    labels = [f"s{r['seed']} {r['kernel']}" for r in runs]
    claims = {c["id"]: c for r in runs for c in r["claims"]}
    lines = [
        f"# {path.stem}: asserted quantities over seeds and CPU kernel sets",
        "",
        f"Conditions: {platform.machine()}, torch {_torch_version()}, 1 thread, CPU, profile "
        f"{profile}, {time.strftime('%Y-%m-%d')}; command: `python benchmarks/seeds.py "
        f"{path.relative_to(ROOT)}`. Runs: " + ", ".join(labels) + " (seed, "
        "`ATEN_CPU_CAPABILITY`; native = the machine's own).",
        "",
        "Margin: how far a comparison is from failing, in the units of the compared "
        "quantity (negative: it failed). Spread: max − min of the compared value over the "
        "runs. **thin**: worst margin under twice the spread.",
        "",
        "## Comparisons",
        "",
        "| cell | comparison | " + " | ".join(labels) + " | bound | worst margin | spread | |",
        "|---|---|" + "---|" * len(labels) + "---|---|---|---|",
    ]
    thin, failed = 0, 0
    for cid, c in sorted(claims.items(), key=lambda kv: (kv[1]["cell"], kv[1]["assert_line"])):
        if c["kind"] != "compare":
            continue
        rec = [r["recorded"].get(cid) for r in runs]
        margins = [e["margin"] for e in rec if e and e.get("margin") is not None]
        vals = [e["value"] for e in rec if e and e.get("value") is not None]
        bounds = [e["bound"] for e in rec if e and e.get("bound") is not None]
        text = " ".join(c["text"].split()).replace("|", "\\|")
        if len(text) > 70:
            text = text[:67] + "..."
        if not rec or all(e is None for e in rec):
            lines.append(f"| {c['cell']} | `{text}` | " + " | ".join("—" for _ in runs)
                         + " | — | not reached | — | |")
            continue
        if not margins:  # ==, != or non-numeric operands: the errors below say if it failed
            lines.append(f"| {c['cell']} | `{text}` | " + " | ".join(
                "—" if e is None else "reached" for e in rec) + " | — | exact | — | |")
            continue
        worst = min(margins)
        spread = (max(vals) - min(vals)) if vals else float("nan")
        flag = ""
        if worst < 0:
            flag, failed = "**FAILED**", failed + 1
        elif len(vals) > 1 and worst < 2 * spread:
            flag, thin = "**thin**", thin + 1
        bound = _fmt(bounds[0]) if bounds and max(bounds) - min(bounds) < 1e-12 else "varies"
        lines.append(f"| {c['cell']} | `{text}` | " + " | ".join(
            _fmt(e["value"]) if e else "—" for e in rec)
            + f" | {bound} | {_fmt(worst)} | {_fmt(spread)} | {flag} |")
    lines[5:5] = [f"Summary: {failed} failed, {thin} thin.", ""]
    exact = [c for c in claims.values() if c["kind"] == "exact"]
    lines += ["", "## Exact checks (no comparison to measure)", ""]
    for c in sorted(exact, key=lambda c: (c["cell"], c["assert_line"])):
        text = " ".join(c["text"].split())
        lines.append(f"- cell {c['cell']}: `{text[:100]}`")
    keys = sorted({k for r in runs for k in r["values"]})
    if keys:
        lines += ["", "## Recorded numbers (`fmlab.results.record`)", "",
                  "| number | " + " | ".join(labels) + " | mean ± std |",
                  "|---|" + "---|" * len(labels) + "---|"]
        for k in keys:
            vs = [r["values"].get(k) for r in runs]
            ok = [v for v in vs if v is not None and v == v]
            mean = statistics.mean(ok) if ok else float("nan")
            std = statistics.stdev(ok) if len(ok) > 1 else float("nan")
            lines.append(f"| `{k}` | " + " | ".join(_fmt(v) for v in vs)
                         + f" | {_fmt(mean)} ± {_fmt(std)} |")
    lines += ["", "## Errors", ""]
    for r, label in zip(runs, labels):
        lines.append(f"- {label}: " + ("none" if not r["errors"] else "; ".join(r["errors"])))
    lines += ["", "Kernel CPU time per run: " + ", ".join(
        f"{label} {r['cpu']:.0f} s" for r, label in zip(runs, labels)) + ".", ""]
    return "\n".join(lines)


def _torch_version() -> str:
    import torch
    return torch.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS,
                        help="CPU kernel sets: every seed runs natively, the first seed "
                             "under each other set")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks",
                        help="folder for seeds_<chapter>.md (default benchmarks/)")
    args = parser.parse_args()
    profile = os.environ.setdefault("FMLAB_PROFILE", "quick")
    plan = []
    for nb in args.notebooks:
        nb = nb.resolve()
        plan += [(nb, s, "native") for s in args.seeds if "native" in args.kernels]
        plan += [(nb, args.seeds[0], k) for k in args.kernels if k != "native"]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [(nb, pool.submit(run, str(nb), s, k, args.timeout)) for nb, s, k in plan]
        done: dict[Path, list[dict]] = {}
        for nb, f in futures:
            r = f.result()
            print(f"{nb.stem} seed {r['seed']} {r['kernel']}: {len(r['errors'])} errors, "
                  f"{r['cpu']:.0f} s CPU, {r['wall']:.0f} s wall", flush=True)
            for e in r["errors"]:
                print("   ", e, flush=True)
            done.setdefault(nb, []).append(r)
    for nb, runs in done.items():
        text = report(nb, runs, profile)
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / f"seeds_{nb.stem}.md"
        out.write_text(text)
        print(f"written to {out}", file=sys.stderr)
        print("\n".join(l for l in text.splitlines() if "**" in l or l.startswith("Summary")))


if __name__ == "__main__":
    main()
