# The two commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs first. ARGS are passed to the demo, e.g. make demo ARGS="--cpu-only -c ckpt".
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=

.PHONY: demo demo-offline test lint bench install install-dev browser

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.runtime: requirements_web_demo.txt | $(VENV)/bin/python
	$(PIP) -r requirements_web_demo.txt
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

test: install-dev browser
	$(PY) -m ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: install-dev
	HF_HUB_OFFLINE=1 $(PY) bench/overhead.py
