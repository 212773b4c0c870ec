# triggerd — the two commands that matter (tests run with asyncio debug mode on):
#   make run    create .venv, install what running needs, start the daemon on
#               config/triggerd.example.yaml (drop files into ./data/landing to see a retrain)
#   make test   install, then ruff, mypy --strict, the docs build and the whole pytest suite
#   make docs   serve the docs site (docs/, MkDocs Material) on http://127.0.0.1:8000

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= config/triggerd.example.yaml
STAMP   = $(VENV)/.installed

.PHONY: run test lint typecheck pytest install clean bench fuzz ops-tools browser azurite refs \
        docs docs-build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# `make run` needs only what running needs (no test tools)
RUN_STAMP = $(VENV)/.installed-run
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	mkdir -p data/landing
	$(BIN)/triggerd run --config $(CONFIG)

lint: install
	$(BIN)/ruff check triggerd tests bench docs

# the generated reference pages (docs/reference/): config keys from the schema, the CLI's help
refs: install
	$(BIN)/python docs/gen_refs.py

typecheck: install
	$(BIN)/mypy --strict triggerd
	$(BIN)/mypy --strict docs/examples/plugin/triggerd_example

# the docs site: `docs-build` fails on a broken link or anchor, a missing page or snippet
# (--strict; not with --quiet, which hides the warnings strict mode counts)
MKDOCS = NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
docs-build: install
	$(MKDOCS) build --strict --site-dir site

docs: install
	$(MKDOCS) serve --dev-addr 127.0.0.1:8000

# the systemd unit's checks need systemd-analyze (Debian's systemd package): installed here when
# missing and we can (root with apt-get); else those tests skip (and fail under CI=true)
ops-tools:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends systemd >/dev/null; \
	  else echo "note: systemd-analyze missing; install Debian's systemd package"; fi; }

# the replay page is checked in a real browser: Debian's chromium, installed here when missing
# and we can (root with apt-get); else that test skips (and fails under CI=true)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	  else echo "note: chromium missing; install Debian's chromium package"; fi; }

# the Azure Blob tests run against Azurite, Microsoft's emulator: the npm package, installed
# into the venv with the machine's Node.js and npm (Debian's when missing and we can); the
# same version every time, kept until `make clean`; else those tests skip (fail under CI=true)
AZURITE_VERSION ?= 3.37.0
AZURITE = $(VENV)/azurite/node_modules/.bin/azurite-blob

$(AZURITE): | $(BIN)/python
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; \
	  fi; }
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --prefix $(VENV)/azurite --no-audit --no-fund --save-exact --loglevel=error \
	    azurite@$(AZURITE_VERSION) >/dev/null || echo "note: npm could not install azurite"; \
	else echo "note: npm missing; install Node.js and npm for the Azure tests"; fi

azurite: $(AZURITE)

pytest: install ops-tools browser azurite
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest -q

test: lint typecheck docs-build pytest

bench: install
	$(BIN)/python bench/ingest.py

# fuzz each target (expressions, config loader, Kafka decoder) for FUZZ_SECONDS, with atheris
FUZZ_SECONDS ?= 300
fuzz: install
	$(BIN)/python -m pip install --quiet -e '.[test,fuzz]'
	$(BIN)/python bench/fuzz.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .triggerd site .mypy_cache .ruff_cache .pytest_cache
