# Every target creates .venv on first use: `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two installs: the server's runtime dependencies only (`make serve`: the `server` extra,
# no torch, no dev tools), and everything the tests and linters need (`.[dev]`).
SERVER_STAMP := $(VENV)/.server-stamp
STAMP        := $(VENV)/.installed-stamp
# torch is installed first and pinned: a bare `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: venv serve test lint proto bench clean redis-server chromium

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(SERVER_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q -e ".[server]"
	touch $(SERVER_STAMP)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP) $(SERVER_STAMP)

venv: $(STAMP)

# The server on the embedded store (data in ~/.local/share/paramsched unless --data-dir).
# `make serve ARGS="--port 0 --address-file /tmp/ps.addr"` passes flags through.
serve: $(SERVER_STAMP)
	$(BIN)/paramsched serve $(ARGS)

# Tests start their own redis-server processes; install it from Debian's packages if missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; }

# The dashboard's browser tests drive Debian's headless Chromium and its driver.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium and chromium-driver (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }

test: $(STAMP) redis-server chromium
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy server client cli proto/paramsched/__init__.py tools

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

bench: $(STAMP) redis-server
	$(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
