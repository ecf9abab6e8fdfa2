# Two set-up commands: `make run` (a demo) and `make test` (the test suite); `make deployment`:
# the real Flower deployments; `make acceptance`: the multi-run accuracy checks on real images
# (CI runs all three).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test deployment acceptance lint bench audit clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,flower]" "$(TORCH_SPEC)"
	touch $(STAMP)

install: $(STAMP)

# The demo: 4 synthetic scanners under SecAgg+, FedBN (BatchNorm stays at each scanner's site),
# then the same run in plain fp32 (trained once, cached) for the comparison line.
DEMO ?= --algorithm fedbn --rounds 8 --compare-plain
run: $(STAMP)
	$(BIN)/fedshield run $(if $(ARGS),$(ARGS),$(DEMO))

test: $(STAMP)
	$(BIN)/ruff check fedshield tests benchmarks examples
	$(BIN)/python -m pytest -n 3 --dist worksteal --benchmark-disable -m "not slow and not flower" tests

# Real Flower deployments (loopback, TLS and SuperNode auth, network namespaces): many processes
# each, mostly waiting on Flower's polling; CI runs them after `make test`.
deployment: $(STAMP)
	$(BIN)/python -m pytest -n 3 --dist worksteal --benchmark-disable -m "flower and not slow" tests

# Each training runs once, in its own process, cached under runs/test-cache (tests/run_cache.py).
acceptance: $(STAMP)
	$(BIN)/python -m pytest -n 2 --benchmark-disable -m slow tests

lint: $(STAMP)
	$(BIN)/ruff check fedshield tests benchmarks examples
	$(BIN)/ruff format --check fedshield tests benchmarks examples

# The overhead grid beside Flower's SecAgg+ and the FLARE way (docs/overhead.md), then the
# per-component benchmarks (kernels, wire, DP, and each protocol's own) into runs/bench.
bench: $(STAMP)
	$(BIN)/fedshield bench overhead --out runs/bench/overhead
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script --out runs/bench || exit 1; done

# The protocol audits and 2000 mutated messages (docs/audit.md); exit status 1 on any failure.
audit: $(STAMP)
	$(BIN)/fedshield audit --quick --fuzz 2000 --out runs/audit

clean:
	rm -rf $(VENV) runs .pytest_cache .benchmarks  # runs/ holds the test-run cache too
	find fedshield -name '*.nbi' -delete -o -name '*.nbc' -delete  # numba's kernel cache
