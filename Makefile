# Two commands: `make run` (a local cluster with the demo model) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast bench lint clean

setup:
	@./scripts/bootstrap.sh

run: setup
	$(BIN)/inferq cluster --nodes 2 --demo-model

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.throughput

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy shared gateway workers

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results
