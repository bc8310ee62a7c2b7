# heat-gateway: `make demo` runs the plant simulators and the gateway; `make test` runs lint and
# every test. Both create .venv and install the project into it first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-min lint unit bench services clean docs venv dist

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

# The lowest dependency versions pyproject.toml allows, in their own venv: the driver, config,
# control, MQTT and historian tests must pass with them, or the floors are lies. Called by
# .ci/run after `make test` (the MQTT tests use the Mosquitto and victoria-metrics it installed).
MIN_VENV := .venv-min
MIN_TESTS := tests/test_codec.py tests/test_planner.py tests/test_config.py tests/test_pid.py \
  tests/test_control_blocks.py tests/test_supervisor.py tests/test_modbus.py tests/test_opcua.py \
  tests/test_mqtt_client.py tests/test_publisher.py tests/test_end_to_end.py tests/test_health.py
test-min: services
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11+)"; exit 1; }
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(PYTHON) scripts/lowest-versions.py > $(MIN_VENV)/constraints.txt
	$(MIN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MIN_VENV)/bin/python -m pip install --quiet -c $(MIN_VENV)/constraints.txt -e '.[dev]'
	$(MIN_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(asyncua|pymodbus|paho-mqtt|influxdb-client|structlog|pydantic|pyyaml)=='
	$(MIN_VENV)/bin/pytest -p no:cacheprovider -m "not slow" $(MIN_TESTS)

unit: $(STAMP)
	$(BIN)/pytest -m "not services"

demo: $(STAMP)
	-@bash scripts/ensure-services.sh --optional
	$(BIN)/python scripts/demo.py

bench: $(STAMP) services
	$(BIN)/python bench/run.py

# The release artifact: dist/heat-gateway-VERSION.tar.gz (wheel, wheelhouse, config, deploy,
# docs, install.sh), installable with no network (deploy/README.md).
dist: $(STAMP)
	bash scripts/make-dist.sh dist

clean:
	rm -rf $(VENV) $(MIN_VENV) .mypy_cache .ruff_cache .pytest_cache reports var

# Regenerate the README's configuration reference from the models.
docs: $(STAMP)
	$(BIN)/python scripts/update_readme.py
