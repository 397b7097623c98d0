# The README's two commands: `make reproduce` and `make test`. Each sets everything up on a fresh machine.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(abspath $(VENV))/bin/python
BIN   := $(abspath $(VENV))/bin
STAMP := $(VENV)/.ltpaper-installed
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PROFILE ?= cpu
SEEDS   ?= 0
TABLES  ?= fmnist_lt

.PHONY: install data chromium test test-fast reproduce refresh-results bench sync-check clean-nbs notebooks lab docs render

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip "setuptools>=77" wheel 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, nbdev, papermill, ltpaper" || { echo "make: the install into $(VENV) failed; see the pip output above" >&2; exit 1; }
	@touch $(STAMP)

# Fashion-MNIST, the embedded default for CPU runs: Debian's package when root on Debian, else torchvision's download.
data: $(STAMP)
	@if [ ! -f $(FMNIST_DEB) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; fi
	$(PY) -m ltpaper.cli fetch fmnist_lt

# Headless Chromium for tests/test_docs.py (opens every page of the documentation site): Debian's package when root
# on Debian; elsewhere install a chromium yourself (the test skips without one).
chromium:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; }; fi

# The numbers of README.md and docs/*.md, rendered from the committed tables and results (tools/render_docs.py
# rewrites the blocks between its begin:/end: comments; `--check` only reports stale ones). Run it after the results
# or the paper notebooks' tables change.
render: $(STAMP)
	$(PY) tools/render_docs.py

# The documentation site: the pages of docs/ and every notebook rendered with its committed outputs (never executed),
# into docs/_build/html; MathJax is served from the site (sphinx-mathjax-offline), so it builds and reads offline.
docs: $(STAMP)
	rm -rf docs/_build
	PATH=$(BIN):$$PATH $(BIN)/jupyter-book build . --config docs/_config.yml --toc docs/_toc.yml --path-output docs

# Notebooks and ltpaper/ must be in step: export + clean may not change a tracked file.
sync-check: $(STAMP)
	@bash tools/check_sync.sh $(BIN)

# One OpenMP thread per process: the test runners start several torch processes at once, and on 2 cores
# spinning OpenMP threads of different processes slow each other down by up to 10x.
test: export OMP_NUM_THREADS = 1
# The tests leave the work tree as they found it (rendered files are byte-stable, outputs go to temporary folders).
# Both run under the AVX2 pins (ltpaper.numerics: the same bits on every x86-64 machine; LTPAPER_NUMERICS=native
# runs the processor's own kernels, and the tests that compare bits then compare by the noise rule instead).
PINNED := PATH=$(BIN):$$PATH $(PY) -m ltpaper.numerics --
test: $(STAMP) data chromium
	@git status --porcelain > $(VENV)/.status-before 2>/dev/null || true
	@$(PY) -m ltpaper.numerics
	$(PINNED) $(BIN)/nbdev-test --n-workers 2 --timing
	$(PINNED) $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests
	@bash tools/check_sync.sh $(BIN)
	@git status --porcelain 2>/dev/null | diff -q $(VENV)/.status-before - >/dev/null || { \
	  echo "make test changed the work tree (git status before vs after):" >&2; \
	  git status --porcelain | diff $(VENV)/.status-before - >&2; exit 1; }

# `make reproduce` retrains seed 0 of the CPU table into the scratch root $(REPRODUCED) (git-ignored; a second call
# resumes it), renders its tables and figures there and compares every run with the committed one. It never writes
# the committed results/, tables/ or figures/: `make refresh-results` reruns the committed CPU table in place
# (every row and seed, --force; a result is replaced only once its rerun has finished).
JOBS ?= 2
REPRODUCED ?= reproduced
reproduce: $(STAMP) data
	for t in $(TABLES); do \
	  PATH=$(BIN):$$PATH OMP_NUM_THREADS=1 $(PY) -m ltpaper.cli reproduce $$t --profile $(PROFILE) --seeds $(SEEDS) --jobs $(JOBS) --results-root $(REPRODUCED) || exit $$?; \
	  PATH=$(BIN):$$PATH $(PY) -m ltpaper.cli compare $$t --profile $(PROFILE) --seeds $(SEEDS) --results-root $(REPRODUCED) || exit $$?; \
	  echo "tables and figures of this reproduction: $(REPRODUCED)/tables/, $(REPRODUCED)/figures/"; done

refresh-results: $(STAMP) data
	for t in $(TABLES); do PATH=$(BIN):$$PATH OMP_NUM_THREADS=1 $(PY) -m ltpaper.cli reproduce $$t --profile $(PROFILE) --force --jobs $(JOBS) || exit $$?; done

bench: $(STAMP)
	$(PINNED) $(PY) benchmarks/run_all.py

clean-nbs: $(STAMP)
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean

# Notebooks committed with their outputs, so that a reader on a code host sees their figures and tables: the library
# notebooks whose point is a picture and every paper notebook. `make notebooks` executes them in place (kernels import
# this checkout's ltpaper) and cleans them; unchanged code and results give unchanged bytes.
NOTEBOOKS_WITH_OUTPUTS := nbs/losses/02_binning.ipynb nbs/method.ipynb nbs/paper/fmnist_lt.ipynb nbs/paper/fmnist_lt_budget.ipynb \
                          nbs/paper/intra_balance_study.ipynb nbs/paper/mechanism.ipynb nbs/paper/table1.ipynb nbs/paper/table2.ipynb \
                          nbs/paper/table3.ipynb
notebooks: $(STAMP)
	for nb in $(NOTEBOOKS_WITH_OUTPUTS); do \
	  PYTHONPATH=$(CURDIR) OMP_NUM_THREADS=1 $(PINNED) $(BIN)/jupyter nbconvert --to notebook --execute --inplace $$nb || exit $$?; done
	$(BIN)/nbdev-clean

lab: $(STAMP)
	$(BIN)/jupyter lab --no-browser
