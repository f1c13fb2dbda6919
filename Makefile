# The two commands a newcomer needs: `make run` and `make test`. Each sets itself up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk, never an unpinned CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The attacks' reference in the tests; it names torchvision as a dependency, which cannot sit
	# beside the CPU torch cleanly, and it runs without it.
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dlforge run recipes/default.yaml

lint: $(STAMP)
	$(BIN)/ruff check dlforge tests benchmarks
	$(BIN)/ruff format --check dlforge tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py
	$(BIN)/python benchmarks/reproduce_mnist1d.py
	$(BIN)/python benchmarks/run_time.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
