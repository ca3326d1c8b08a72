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
	$(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt -e '.[dev,scale]'
	touch $@

install: $(STAMP)

## the main job: the Voila page on http://127.0.0.1:8866 (newest bundle in models/, else the starter)
app: install
	$(BIN)/bear-app

## the whole suite: every notebook in a fresh Jupyter kernel (one test each) + tests/*.py
test: install
	$(BIN)/python -m pytest

## the suite without browser tests
test-fast: install
	$(BIN)/python -m pytest -m "not browser"

## the notebooks with their cells flagged slow too (real training runs, full replays)
test-slow: install
	$(BIN)/nbdev-test --flags slow --do-print
	$(BIN)/python -m pytest --runslow tests/test_faults.py

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

## ---- issue 14 (H-lab): authoring in JupyterLab, and the docs site -------------------------------
## JupyterLab on nbs/ at http://127.0.0.1:8888/lab/tree/nbs (the token is printed); the page's preview
## is http://127.0.0.1:8888/voila/render/nbs/app.ipynb on the same server (Voila's server extension).
## Offline: no update check, no news feed, no MathJax from a CDN on the preview (as with `make app`;
## JupyterLab has its own). The websocket limit is voila.json's, as for `make app`. The preview uses the
## page's template (share/jupyter/voila/templates/bear: Voila's lab template without its CDN links).
## allow_root: CI and containers run as root (a non-root user is unaffected).
LAB_PORT ?= 8888
LAB_ROOT ?= $(CURDIR)
LAB_OPEN ?= True
LAB_WS_MAX = $(shell python3 -c "import json; print(json.load(open('$(CURDIR)/voila.json'))['Voila']['tornado_settings']['websocket_max_message_size'])")
LAB_ARGS = --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --ServerApp.port_retries=0 \
	--ServerApp.root_dir=$(LAB_ROOT) --ServerApp.open_browser=$(LAB_OPEN) --ServerApp.allow_root=True \
	--LabApp.default_url=/lab/tree/nbs \
	--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.news_url=None \
	--VoilaConfiguration.template=bear \
	--ServerApp.tornado_settings="{'websocket_max_message_size': $(LAB_WS_MAX), 'mathjax_url': None, 'mathjax_config': None}"
.PHONY: lab docs
lab: install
	JUPYTER_PATH=$(CURDIR)/share/jupyter$${JUPYTER_PATH:+:$$JUPYTER_PATH} $(BIN)/jupyter lab $(LAB_ARGS)

## the documentation site, offline, from the notebooks (mkdocs-material + mkdocs-jupyter): _docs/index.html
## (each notebook runs in a kernel first, as in `make test`, so that the pages show outputs and plots)
docs: install
	$(BIN)/python docs/build.py --execute
