"""Compile, once, the modules the chapters, the labs' grader and the tests import.

`make install` installs with ``pip --no-compile``: byte-compiling every file of every package
(transformers, sympy, pandas, ... most never imported here) took about 40 s of the install's
two minutes. Importing what the course uses writes the bytecode of just those modules (run
with PYTHONDONTWRITEBYTECODE unset); anything else compiles the first time it is imported.
A module that is not installed (an extra left out) is named and skipped.

Two processes import at once, one per group below (torch and the libraries built on it; the
rest, then fmlab), so both cores compile: 16 s instead of 24 s for one process here (each
measured with an empty PYTHONPYCACHEPREFIX, so that everything compiled).
"""
import importlib
import logging
import pkgutil
import subprocess
import sys
import warnings

GROUPS = [
    [  # torch and the libraries built on it
        "torch", "torch._dynamo", "torch.distributed", "torch.utils.benchmark", "torchvision",
        "torchao.quantization", "captum.attr",
        "torchattacks", "torch_pruning", "peft",  # (the test extra)
    ],
    [  # the rest, then fmlab's own modules (added in main), once the other has compiled torch
        "numpy", "matplotlib.pyplot", "sklearn.metrics", "sklearn.linear_model", "mlxtend.data",
        "tqdm.auto", "ipywidgets", "nbformat", "IPython",
        "pytest", "xdist", "nbval.plugin", "nbclient", "ipykernel.kernelapp", "jupyter_client",
        "yaml", "packaging.requirements", "playwright.sync_api", "jupyter_book.cli.main",
        "myst_nb", "sphinx.application",  # (the test and book extras)
    ],
]


def warm(names: list[str]) -> list[str]:
    """Import each of ``names``; return those that failed, with the reason's type."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- a warm-up: report, never stop the install
            missing.append(f"{name} ({type(e).__name__})")
    return missing


def main(argv: list[str]) -> int:
    if sys.dont_write_bytecode:
        print("warm_imports: PYTHONDONTWRITEBYTECODE is set, so nothing would be written; skipped")
        return 0
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # torch's import-time notices
    if argv[:1] == ["--group"]:  # one of the two processes main starts
        missing = warm(GROUPS[int(argv[1])])
        if argv[1] == "1":  # fmlab imports torch: by now the other process has compiled it
            import fmlab
            missing += warm([info.name for info in pkgutil.walk_packages(fmlab.__path__, "fmlab.")
                             if not info.name.endswith("__main__")])  # that one runs the CLI
        if missing:
            print("warm_imports: not compiled (not installed or failed to import):",
                  ", ".join(missing))
        return 0
    procs = [subprocess.Popen([sys.executable, __file__, "--group", str(g)])
             for g in range(len(GROUPS))]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
