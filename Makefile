# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.yml

.PHONY: run test install clean

# Installed as a regular (non-editable) package refreshed on every change,
# because setuptools' default editable mode hides twisted/plugins from
# twistd's plugin scan.
$(BIN)/twistd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

install: $(BIN)/twistd

run: install
	$(BIN)/twistd --pidfile= -n pbx --config $(CONFIG)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
	find . -name dropin.cache -delete
