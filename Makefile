# The two commands: `make demo` runs the example, `make test` runs every check.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: demo test lint docs bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

# The example task API on SQLite files and in-process cache and limits; it
# prints its URL, the docs URL and the README curl session's first command.
demo: $(STAMP)
	SCALEKIT_ENV=$${SCALEKIT_ENV:-development} $(PY) -m examples.taskapi --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy --strict scalekit

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir .site

# The Debian packages the real-server tests start (redis, MariaDB, nginx, ...).
system-deps:
	@bash tools/system-deps.sh

test: system-deps lint docs
	$(PY) -m pytest

# Every HTTP variant side by side (bench/run_all.py; BENCH_ARGS=--quick for a short run),
# then the database routing bench on MariaDB. Rewrites docs/benchmarks.md and its JSON and chart.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[all,dev,bench]"
	$(PY) bench/run_all.py --db $(BENCH_ARGS)

clean:
	rm -rf .site .pytest_cache .mypy_cache .ruff_cache
