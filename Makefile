# teelab — the two commands a newcomer needs are `make demo` and `make test`.
# Both create or refresh the local virtual environment (.venv) and install everything they need.

PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.teelab-installed
PYTEST_ARGS ?=

.PHONY: help demo hub-demo test lint format bench protos clean venv system-deps typecheck-tree labextension wheel-check

help:
	@echo "make demo    start the demo (simulated TEE, attested kernel, key broker, sample sealed dataset)"
	@echo "make hub-demo  a real JupyterHub: alice, bob, carol, the key broker as a hub service (docs/jupyterhub.md)"
	@echo "make test    install what is needed, lint, and run every test"
	@echo "make bench   run the benchmarks; writes benchmarks/results/*.json and BENCHMARKS.md"
	@echo "make lint    ruff + mypy"
	@echo "make protos  regenerate the gRPC modules from protos/*.proto"
	@echo "make wheel-check  build sdist + wheel of HEAD, install into a fresh venv, use it as a user (make test runs it too)"

venv: $(STAMP)

# The JupyterLab extension: TypeScript in labextension/, built into extension/labextension/.
LABEXT_BUILT   := extension/labextension/package.json
LABEXT_SOURCES := $(wildcard labextension/package.json labextension/yarn.lock labextension/.yarnrc.yml \
                    labextension/tsconfig.json labextension/src/*.ts labextension/src/*/*.ts labextension/style/*)
PIP_STAMP      := $(VENV)/.teelab-pip-installed

# Ready when the venv has the project installed (editable) and the built JupyterLab extension linked in.
$(STAMP): $(PIP_STAMP) $(LABEXT_BUILT)
	$(PY) labextension/develop.py
	@touch $@

# Re-runs whenever the project's dependency list changes.
$(PIP_STAMP): pyproject.toml setup.py
	@scripts/install-system-deps.sh  # node: the install builds the JupyterLab extension
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# Rebuilt when a source changed or the output is gone; build.py compares digests, so a mere touch is cheap.
$(LABEXT_BUILT): $(PIP_STAMP) $(LABEXT_SOURCES)
	$(PY) labextension/build.py

# Rebuild the JupyterLab extension even if nothing changed, and link it into the venv.
labextension: $(PIP_STAMP)
	$(PY) labextension/build.py --force
	$(PY) labextension/develop.py

# Debian and npm packages the tests and the demo use (Chromium for UI tests, configurable-http-proxy for JupyterHub).
system-deps:
	@scripts/install-system-deps.sh

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py

# Many users: JupyterHub with configurable-http-proxy (npm), the key broker as the hub service teelab-kbs.
hub-demo: $(STAMP) system-deps
	$(VENV)/bin/teelab hub demo

lint: $(STAMP) typecheck-tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .build/typecheck/teelab

# mypy cannot follow setuptools' package-dir mapping, so it checks a tree of links laid out like the installed package.
typecheck-tree:
	@$(PY) scripts/typecheck_tree.py .build/typecheck

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP) system-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The released artefacts, as a user gets them: sdist and wheel of the committed HEAD, a fresh venv, no checkout
# on any path (scripts/wheel_smoke.py; tests/packaging/test_wheel_smoke.py runs the same inside `make test`).
wheel-check: $(STAMP)
	$(PY) scripts/wheel_smoke.py

bench: $(STAMP) system-deps
	$(PY) benchmarks/run.py

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

clean:
	rm -rf .build build *.egg-info .mypy_cache .ruff_cache .pytest_cache
