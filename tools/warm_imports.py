"""Compile, once, the modules the chapters, the labs' grader and the tests import.

`make install` installs with ``pip --no-compile``: byte-compiling every file of every package
(transformers, sympy, pandas, ... most never imported here) took about 40 s of the install's
two minutes. Importing what the course uses writes the bytecode of just those modules (run
with PYTHONDONTWRITEBYTECODE unset); anything else compiles the first time it is imported.
A module that is not installed (an extra left out) is named and skipped.
"""
import importlib
import logging
import pkgutil
import sys
import warnings

MODULES = [
    "torch", "torch._dynamo", "torch.distributed", "torch.utils.benchmark", "torchvision",
    "torchao.quantization", "numpy", "matplotlib.pyplot", "sklearn.metrics",
    "sklearn.linear_model", "mlxtend.data", "tqdm.auto", "ipywidgets", "nbformat", "IPython",
    "captum.attr",
    # the test and book extras
    "pytest", "xdist", "nbval.plugin", "nbclient", "ipykernel.kernelapp", "jupyter_client",
    "torchattacks", "torch_pruning", "peft", "yaml", "packaging.requirements",
    "playwright.sync_api", "jupyter_book.cli.main", "myst_nb", "sphinx.application",
]


def main() -> int:
    if sys.dont_write_bytecode:
        print("warm_imports: PYTHONDONTWRITEBYTECODE is set, so nothing would be written; skipped")
        return 0
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # torch's import-time notices
    import fmlab
    names = MODULES + [info.name for info in pkgutil.walk_packages(fmlab.__path__, "fmlab.")
                       if not info.name.endswith("__main__")]  # that one runs the CLI
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- a warm-up: report, never stop the install
            missing.append(f"{name} ({type(e).__name__})")
    if missing:
        print("warm_imports: not compiled (not installed or failed to import):",
              ", ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
