# Convenience targets; the README's commands are the reference.
PY := .venv/bin/python

.PHONY: setup test lint bench demo

setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest

lint:
	.venv/bin/ruff check mailcase tests scripts bench
	.venv/bin/mypy

demo:
	bash scripts/demo.sh

# The ingest benchmark (README "Benchmark"); N=1000 by default: make bench N=10000
N ?= 1000
DB ?= sqlite
REPEAT ?= 3
bench: setup
	$(PY) bench/ingest.py -n $(N) --db $(DB) --repeat $(REPEAT)
