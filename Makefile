# Two commands on a fresh machine: `make run` opens the panel, `make test` runs every test.
# Both are idempotent: a second run reuses the environments and the model it built.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
ENGINE := .venv-vllm
QUANT := .venv-quant
TINY_MODEL := .models/tiny
TINY_MTP_MODEL := .models/tiny-mtp
STAMP := $(VENV)/.qtui-panel-ready

.PHONY: run test test-fast panel engine quant-env tiny-model lint check clean

run: panel engine tiny-model
	$(VENV)/bin/qtui init --engine $(ENGINE)/bin/vllm --cpu-model $(TINY_MODEL) --mtp-model $(TINY_MTP_MODEL)
	$(BYTECODE)
	$(VENV)/bin/qtui

# An editable install leaves the bytecode to the first run, which cannot write it where
# PYTHONDONTWRITEBYTECODE is set: every start would compile the panel (~0.1 s). pip
# compiles an installed package; this does the same for the checkout (up-to-date files
# are skipped, so it costs nothing when nothing changed).
BYTECODE := $(VENV)/bin/python -m compileall -q backend tui themes

panel: $(STAMP)
	@$(BYTECODE)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

engine:
	bash scripts/setup-engine.sh $(ENGINE)

quant-env:
	bash scripts/setup-quant.sh $(QUANT)

tiny-model: panel
	$(VENV)/bin/qtui tiny-model $(TINY_MODEL)
	$(VENV)/bin/qtui tiny-model --mtp $(TINY_MTP_MODEL)

lint: panel
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: panel engine quant-env lint
	QTUI_VLLM=$(CURDIR)/$(ENGINE)/bin/vllm QTUI_QUANT_PYTHON=$(CURDIR)/$(QUANT)/bin/python \
	  $(VENV)/bin/pytest -q -ra

# The tier without the engine: seconds-to-minutes feedback while editing the panel.
test-fast: panel lint
	$(VENV)/bin/pytest -q -ra -m "not vllm and not slow and not quant"

clean:
	rm -rf $(VENV) $(ENGINE) $(QUANT) .models
