# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs first. ARGS are passed to the demo, e.g. make demo ARGS="--cpu-only -c ckpt".
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=
# What test-fast leaves out: tests that load a model, start a server, a browser or a subprocess
# (marked by the fixtures they use, see tests/conftest.py).
HEAVY := model or server or browser or subprocess

.PHONY: demo demo-offline test test-fast lint format typecheck bench install install-dev browser

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# The project itself is installed (editable), so that app/ and bench/ import from anywhere.
$(VENV)/.runtime: requirements_web_demo.txt pyproject.toml | $(VENV)/bin/python
	$(PIP) -r requirements_web_demo.txt
	$(PIP) --no-deps -e .
	touch $@

$(VENV)/.dev: requirements_dev.txt $(VENV)/.runtime
	$(PIP) -r requirements_dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

demo: install
	$(PY) web_demo_mm.py $(ARGS)

# Try the UI offline, without the real weights: a tiny random checkpoint (answers are gibberish).
demo-offline: install
	$(PY) -m app.tiny_checkpoint checkpoints/tiny
	$(PY) web_demo_mm.py -c checkpoints/tiny --cpu-only $(ARGS)

# Headless chromium for the browser tests, with fonts for emoji and Chinese labels in screenshots.
BROWSER_PACKAGES := chromium fonts-noto-color-emoji fonts-wqy-microhei
browser:
	@command -v chromium >/dev/null && fc-list | grep -qi wqy || \
	  (apt-get update -qq && apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null) \
	  || echo "chromium could not be installed: browser tests will be skipped"

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Gradio writes a .pyi stub next to a module that subclasses a component (app/components.py);
# mypy would read the stub instead of the source, so it goes first (it is git-ignored).
typecheck: install-dev
	rm -f app/*.pyi
	$(PY) -m mypy

test: install-dev browser lint typecheck
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The fast loop: everything that needs no model, server, browser or subprocess (seconds).
test-fast: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not ($(HEAVY))"

format: install-dev
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install-dev
	HF_HUB_OFFLINE=1 $(PY) bench/overhead.py
