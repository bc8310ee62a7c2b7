# heat-gateway: `make demo` runs the plant simulators and the gateway; `make test` runs lint and
# every test. Both create .venv and install the project into it first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit bench services clean docs venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11+)"; exit 1; }
	@# Debian splits venv/ensurepip into python3-venv: install it when we can (root), say so otherwise.
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "need the python3-venv package (apt-get install python3-venv)"; exit 1; fi; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Mosquitto and victoria-metrics binaries (Debian packages) for the tests and the demo.
# The tests start private instances on free ports; nothing is left running.
services:
	@bash scripts/ensure-services.sh
	@bash scripts/ensure-node-opcua.sh

lint: $(STAMP)
	$(BIN)/ruff check gateway simulators tests bench scripts
	$(BIN)/mypy

test: $(STAMP) services lint
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m "not services"

demo: $(STAMP)
	-@bash scripts/ensure-services.sh --optional
	$(BIN)/python scripts/demo.py

bench: $(STAMP) services
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache reports var

# Regenerate the README's configuration reference from the models.
docs: $(STAMP)
	$(BIN)/python scripts/update_readme.py
