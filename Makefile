# Each target creates .venv and installs what it needs, once (a stamp per set, redone when
# pyproject.toml changes): the demo needs the core only; the tests need every extra and the
# development tools (PEP 735 dependency groups, which pip installs from 25.1 on).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet
VENV_STAMP := $(VENV)/.venv-stamp
CORE := $(VENV)/.core-stamp
WEB := $(VENV)/.web-stamp
DEV := $(VENV)/.dev-stamp
DOCS := $(VENV)/.docs-stamp
# Browser-side tools from the npm registry (axe-core for the browser journey, mermaid for the
# docs site), pinned by tools/npm/package-lock.json, installed into tools/npm/node_modules.
NPM_DIR := tools/npm
NPM_STAMP := $(NPM_DIR)/node_modules/.installed-stamp

.PHONY: demo serve test lint typecheck diagram docs bench fuzz mutate npm clean

$(VENV_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade 'pip>=25.1'
	touch $@

# The library alone: python-statemachine, attrs, cryptography, email-validator.
$(CORE): pyproject.toml $(VENV_STAMP)
	$(PIP) -e .
	touch $@

$(WEB): pyproject.toml $(VENV_STAMP)
	$(PIP) -e '.[web]'
	touch $@

# Every extra, so that their tests run, and the `dev` group: tests, lint, types, docs, mutmut.
$(DEV): pyproject.toml $(VENV_STAMP)
	$(PIP) -e '.[postgres,web,diagrams,otel]' --group dev
	touch $@

$(DOCS): pyproject.toml $(VENV_STAMP)
	$(PIP) --group docs
	touch $@

$(NPM_STAMP): $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	npm ci --prefix $(NPM_DIR) --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(NPM_STAMP)

npm: $(NPM_STAMP)

# The scripted journey on the embedded default (SQLite file and .eml outbox in var/demo).
demo: $(CORE)
	$(VENV)/bin/email-change demo --var var/demo

# The reference web app on the embedded default, with its demo pages, for a person with a
# browser on this machine (the demo is refused on a non-loopback address).
serve: $(WEB)
	$(VENV)/bin/email-change serve --demo --var var/serve

lint: $(DEV)
	$(VENV)/bin/ruff check src tests fuzz benchmarks tools docs/conftest.py
	$(VENV)/bin/ruff format --check src tests fuzz benchmarks tools docs/conftest.py

typecheck: $(DEV)
	$(VENV)/bin/mypy

# Lint, strict types, then every test (PostgreSQL ones need EMAIL_CHANGE_TEST_PG_DSN) with
# branch coverage of src/email_change enforced at 95 % (pyproject.toml).
test: lint typecheck $(NPM_STAMP)
	$(PY) -m pytest --cov --cov-branch --cov-report=term-missing:skip-covered

diagram: $(CORE)
	$(VENV)/bin/email-change diagram --format markdown > docs/state-diagram.md

# The documentation site, warnings as errors; the built site needs no network (mermaid is
# copied from tools/npm). Its examples run in `make test` (Sybil).
docs: $(DOCS) $(NPM_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Benchmarks (never collected by pytest): writes benchmarks/results.json and docs/performance.md.
bench: $(DEV)
	$(PY) -m benchmarks.run

# Coverage-guided fuzzing (atheris) of each parser for FUZZ_SECONDS; findings land in var/fuzz/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := address code serial token
fuzz: $(CORE)
	$(PIP) --group fuzz
	mkdir -p var/fuzz
	for target in $(FUZZ_TARGETS); do \
		(cd var/fuzz && ../../$(PY) ../../fuzz/run.py $$target -max_total_time=$(FUZZ_SECONDS) \
			-print_final_stats=1) || exit 1; \
	done

# Mutation testing of the domain modules ([tool.mutmut] in pyproject.toml). Long: run it in the
# background; `mutmut results` lists survivors, `mutmut show NAME` shows one.
mutate: $(DEV)
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut export-cicd-stats 2>/dev/null || true
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .hypothesis site mutants \
		$(NPM_DIR)/node_modules
