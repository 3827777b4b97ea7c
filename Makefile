# The two README commands, `make demo` and `make test`, each set themselves up first:
# create .venv if missing and install the project into it (a no-op when pyproject is unchanged).
# The ray extra is installed too so the Ray engine's test runs for real (loopback only) in CI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recfuse-installed
EXTRAS ?= dev,ray,text,tune
export TF_CPP_MIN_LOG_LEVEL ?= 3
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup demo test lint typecheck importlint protos unit bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) serving/demo.py --workdir runs/demo

lint: setup
	$(VENV)/bin/ruff check recfuse serving/recfuse_serving serving/demo.py tests bench proto data_samples

typecheck: setup
	$(VENV)/bin/mypy

importlint: setup
	$(VENV)/bin/lint-imports

protos: setup
	$(PY) proto/generate.py --check

# Everything CI checks: generated stubs current, lint, import contracts, types, then every test
# (slow integration tests included), on PYTEST_WORKERS pytest-xdist workers (one per core of the
# 2-core CI machine; PYTEST_WORKERS=0 runs in one process, e.g. to use --pdb).
PYTEST_WORKERS ?= 2
test: setup protos lint importlint typecheck
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS)

unit: setup
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) -m "not slow"

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
