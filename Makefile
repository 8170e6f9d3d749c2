# Quick start: `make demo` (replay on the bundled MovieLens data) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-numerics docs bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,docs]'
	touch $(DOCS_STAMP)

# The default strategies and ease (opt-in elsewhere: it refuses logs past 30,000 items).
demo: $(STAMP)
	$(VENV)/bin/smlrec replay --strategies default,ease $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The tests that compare float results of two computations, again under another instruction set
# (oneDNN, MKL and numba held to AVX2) and two threads: CI machines are Intel or AMD, old or new.
test-numerics: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 NUMBA_CPU_NAME=haswell SMLREC_TEST_THREADS=2 \
		$(VENV)/bin/python -m pytest -m numerics $(PYTEST_ARGS)

# The docs site into site/; --strict: a warning (a broken link, a missing page) fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/python -m mkdocs build --strict --site-dir site

bench-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py --quick

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
