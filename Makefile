# Two commands: `make run` (a local cluster with the demo model) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast bench bench-peers lint clean

setup:
	@./scripts/bootstrap.sh

# more options: make run ARGS="--processors 2 --log-level info" (inferq cluster --help)
run: setup
	$(BIN)/inferq cluster --nodes 2 --demo-model $(ARGS)

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

# Writes under benchmarks/results/ only (ignored by git); docs/benchmark.png is the published chart.
bench: setup
	@command -v wrk >/dev/null || echo "make bench: wrk is missing; it will be installed with apt-get (as root) or you will be asked to install it"
	$(BIN)/python -m benchmarks.throughput --chart benchmarks/results/benchmark.png

# also NVIDIA Triton (PyTriton) and infinity-emb, installed from PyPI into venvs under benchmarks/results/peers/
bench-peers: setup
	$(BIN)/python -m benchmarks.throughput --peers

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy shared gateway workers inferq

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results
