# Set-up and entry points. Everything the project needs is installed here, into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint browser clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the dashboard's real-browser test (Debian package).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(VENV)/bin/tcpa-viz demo

# ruff over the whole tree; mypy over tcpa_core and tcpa_viz (the files of [tool.mypy] in pyproject.toml).
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint browser
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache .mypy_cache
