# The two commands a new user needs are `make demo` and `make test`; both set up their own
# virtual environment (and, for the tests, a Docker-API container engine) first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ENGINE_SOCK ?= /run/thunder-podman.sock

.PHONY: demo test lint bench engine vllm-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m thunder_middleware demo

# A Docker-API engine (Podman) for the tool-environment tests; prints why if none can be had.
engine:
	bash scripts/container-engine.sh up

# Lint, types, the whole suite, then the tests against real vLLM (CPU build, installed into
# its own .vllm-venv on first use: about 2 minutes, 3 GB).
test: $(STAMP) engine
	$(VENV)/bin/ruff check thunder_middleware tests benchmarks examples
	$(VENV)/bin/mypy
	DOCKER_HOST=unix://$(ENGINE_SOCK) CONTAINERS_CONF=$(CURDIR)/integrations/podman/containers.conf \
		$(PY) -m pytest -q -p no:cacheprovider --durations=15 --ignore=tests/vllm
	bash scripts/real-vllm.sh test

lint: $(STAMP)
	$(VENV)/bin/ruff check thunder_middleware tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# Real vLLM (CPU build) against the twin on one trace: see benchmarks/README.md.
vllm-check: $(STAMP)
	bash scripts/real-vllm.sh check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
