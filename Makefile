# Every target works from a fresh clone: the first one to run creates .venv and installs
# the pinned stack; later runs skip the install until pyproject.toml or constraints.txt change.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
export PYTHONUNBUFFERED := 1
# run as if the venv were activated (IPython and subprocesses look at these)
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install app test test-fast test-slow export data model starter serve bench clean-report openapi review monitor

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip takes torch/torchvision from this machine's disk; constraints.txt pins the rest of the tree.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

## the main job: the Voila page on http://127.0.0.1:8866 (newest bundle in models/, else the starter)
app: install
	$(BIN)/bear-app

## the whole suite: every notebook (nbdev's runner, one test each) + tests/*.py
test: install
	$(BIN)/python -m pytest

## the suite without browser tests
test-fast: install
	$(BIN)/python -m pytest -m "not browser"

## the notebooks with their cells flagged slow too (real training runs, full replays)
test-slow: install
	$(BIN)/nbdev-test --flags slow --do-print

## notebooks -> modules, then strip outputs/metadata (run before every commit)
export: install
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

data: install
	$(BIN)/bear-collect --dest data/bears

model: install
	$(BIN)/bear-train data/bears --out runs/bears
	$(BIN)/bear-export runs/bears --dest models

## rank data/bears by likely label errors: data/bears-clean/{suspects.csv,suspects.png}
clean-report: install
	$(BIN)/bear-clean-report data/bears

starter: install
	$(BIN)/bear-starter

serve: install
	$(BIN)/bear-serve

## the page in review mode: every answer is a suggestion a human accepts or corrects
review: install
	$(BIN)/bear-app --review

## rewrite the committed OpenAPI schema after changing the API (a test checks it matches the app)
openapi: install
	$(BIN)/bear-serve --openapi openapi.json

## domain-shift report of the prediction log
monitor: install
	$(BIN)/bear-monitor report

bench: install
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done
