# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := training_logs
DEMO_NAME := demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: venv demo test lint typecheck bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned: a CPU wheel on local disk; an open range would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/tlog run --name $(DEMO_NAME) --log-every 1 examples/train.py --epochs 5 --checkpoint-dir $(DEMO_DIR)/checkpoints
	$(BIN)/tlog summary $(DEMO_NAME)
	$(BIN)/tlog plot $(DEMO_NAME)

test: venv
	$(BIN)/python -m pytest -n 2 -q

lint: venv typecheck
	$(BIN)/ruff check tlog tests bench examples

typecheck: venv
	$(BIN)/mypy

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
