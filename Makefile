# Two commands: `make book` builds the website (executing every chapter in the quick profile),
# `make test` runs the whole test suite. Both create .venv and install the kit first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The exact versions CI tests with; pyproject.toml keeps open ranges for Colab.
PINS   := torch==2.14.1 torchvision==0.29.1 torchao==0.18.0

.PHONY: book test install bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PINS) -e ".[book,test]"
	touch $@

book: install
	$(PY) -m fmlab assign labs --out book/labs --no-prove
	FMLAB_PROFILE=quick $(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The website is in _build/html/index.html"

# Two workers, one thread each (tests/conftest.py limits torch, nbval's kernels and the tests'
# subprocesses to one thread under xdist); --dist loadfile keeps each file, and so each
# notebook's cells, on one worker.
test: install
	FMLAB_PROFILE=quick $(PY) -m pytest -n 2 --dist loadfile

# The fit-vs-loop benchmark (fmlab bench train); on a shared machine add OMP_NUM_THREADS=1.
bench: install
	FMLAB_PROFILE=quick $(PY) -m fmlab bench train

clean:
	rm -rf _build book/labs
