# Two commands: `make demo` and `make test`. Both create .venv if missing and (re)install
# the package when pyproject.toml, setup.py or the C extension's source is newer than the
# last install (the install builds the extension).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py weightspace/canonicalize/_lapjv.c | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache
