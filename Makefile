# The two commands README promises: `make demo` (install + run the main job on the
# embedded SQLite default) and `make test` (install everything + run the whole suite).
.PHONY: install deps demo test lint bench wheel-check

VENV := .venv
PY := $(VENV)/bin/python

install:
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .

deps:
	bash scripts/install-deps.sh

demo: install
	$(VENV)/bin/pushcli demo

wheel-check: deps
	bash scripts/check-wheel.sh

lint:
	$(VENV)/bin/ruff check src tests bench stress

# compileall: the suite starts pushcli in a subprocess ~1,000 times; with
# PYTHONDONTWRITEBYTECODE set (as in some CI images) each would compile the package
# from source (~0.16 s CPU), which an installed wheel never does
test: deps
	$(PY) -m compileall -q src/pushcli
	$(PY) -m pytest -q --durations=15

bench: deps
	$(PY) bench/import_bench.py --rows 1000000
	$(PY) bench/send_bench.py --subscribers 100000
