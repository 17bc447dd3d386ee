# Two commands: `make book` builds the website (executing every chapter in the quick profile),
# `make test` runs the whole test suite. Both create .venv and install the kit first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The exact versions CI tests with; pyproject.toml keeps open ranges for Colab.
PINS   := torch==2.14.1 torchvision==0.29.1 torchao==0.18.0
# Python writes each module's bytecode on its first import, and every later process (kernels,
# grading children, tests) reads it. Where the environment sets PYTHONDONTWRITEBYTECODE, every
# process would compile again each module that tools/warm_imports.py did not.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: book test install lab gpu bench clean students sync-install-cells vendor mutation

install: $(VENV)/.installed

# --no-compile, then tools/warm_imports.py compiles only what the course imports (pip's own
# byte-compiling of every package's every file took about 40 of the install's 120 s).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile $(PINS) -e ".[book,test]"
	$(PY) tools/warm_imports.py
	touch $@

# JupyterLab on this checkout (the lab extra), for students working locally: open a lab from
# labs/student/ (or a chapter from book/). LAB_ARGS passes options, e.g. LAB_ARGS=--no-browser.
lab: install $(VENV)/.lab-installed
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

$(VENV)/.lab-installed: pyproject.toml
	$(PY) -m pip install --quiet -e ".[lab]"
	touch $@

# The lab pages show the committed student notebooks in labs/student/ (their Colab buttons open
# them). The build first checks that they and every install cell are current (it rewrites
# nothing); `make students` or `make sync-install-cells` rewrites them.
#
# Chapters execute only when their code (or fmlab, or the build's settings) changed since the
# last build: the execution cache in _build/.jupyter_cache (tools/exec_cache.py). The ones the
# cache lacks run before Sphinx, one per core at a time; a failing cell stops the build.
book: install
	$(PY) tools/course_home.py --check
	FMLAB_PROFILE=quick $(PY) tools/exec_cache.py check
	FMLAB_PROFILE=quick $(PY) tools/exec_cache.py execute
	FMLAB_PROFILE=quick $(VENV)/bin/jupyter-book build . -W -n --keep-going
	FMLAB_PROFILE=quick $(PY) tools/exec_cache.py report
	@echo "The website is in _build/html/index.html"

students: install
	$(PY) -m fmlab assign labs --out labs/student --no-prove

# After changing repository: in _config.yml (a fork's one change), rewrite every install cell.
sync-install-cells: install
	$(PY) tools/course_home.py
	$(PY) -m fmlab assign labs --out labs/student --no-prove

# Refresh the widget scripts the site serves locally (book/_assets/README.txt).
vendor:
	cd book/_assets && tmp=$$(mktemp -d) && mkdir $$tmp/w $$tmp/r && \
	npm pack --silent --pack-destination $$tmp @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8 && \
	tar xzf $$tmp/jupyter-widgets-html-manager-1.0.15.tgz -C $$tmp/w && \
	tar xzf $$tmp/requirejs-2.3.8.tgz -C $$tmp/r && \
	cp $$tmp/w/package/dist/embed-amd.js $$tmp/r/package/require.js . && \
	cp $$tmp/w/package/dist/embed.js.LICENSE.txt embed-amd.js.LICENSE.txt && \
	cp $$tmp/w/package/dist/*.woff2 $$tmp/w/package/dist/*.woff \
	   ../_widget_fonts/book/@jupyter-widgets/html-manager/dist/ && rm -rf $$tmp

# Two workers, one thread each (tests/conftest.py limits torch, nbval's kernels and the tests'
# subprocesses to one thread under xdist); --dist loadfile keeps each file, and so each
# notebook's cells, on one worker.
# --durations lists the slowest tests, so a chapter or test that creeps past its budget shows.
test: install
	FMLAB_PROFILE=quick $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Every chapter and master lab in the full profile on this machine's GPU, with each notebook's
# time, the device and the recorded numbers beside the quick profile's (last make book) in
# benchmarks/RESULTS_gpu.md. On a CPU it refuses; `benchmarks/full_profile.py --smoke` runs
# the smoke size there.
gpu: install
	$(PY) benchmarks/full_profile.py

# The fit-vs-loop benchmark (fmlab bench train); on a shared machine add OMP_NUM_THREADS=1.
bench: install
	FMLAB_PROFILE=quick $(PY) -m fmlab bench train

# Mutation testing of the core modules against the fast unit tests (benchmarks/MUTATION.md):
# one worker, one thread; about an hour. Not part of `make test`. MODULES=train data narrows it.
mutation: install
	$(PY) -m pip show mutmut >/dev/null 2>&1 || $(PY) -m pip install --quiet mutmut==3.8.1
	nice -n 10 $(PY) benchmarks/mutation.py $(MODULES)

clean:
	rm -rf _build
