# The two commands: `make run` (install, then the whole pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock run test test-fast docs docs-serve serve mlflow-ui clean

install: $(STAMP)

# torch first, so the project's `torch>=...` range is already met and pulls nothing more; then
# the project with every other package at the version requirements.lock pins. Last, a .pth file
# that puts the virtualenv's bin/ first on PATH in its every Python process, as activating it
# does, so that dvc.yaml's `brainomaly` commands run under `.venv/bin/dvc` from any shell.
$(STAMP): pyproject.toml requirements.lock Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	echo '$(VENV_ON_PATH)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/brainomaly_venv_path.pth"
	touch $(STAMP)

VENV_ON_PATH := import os, sys; os.environ["PATH"] = os.pathsep.join(dict.fromkeys(filter(None, \
  [os.path.dirname(sys.executable), *os.environ.get("PATH", "").split(os.pathsep)])))

# requirements.lock anew: pyproject.toml's ranges resolved today, in a scratch virtualenv.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet $(TORCH)
	.lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	{ sed -n '/^#/p' requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

test-fast: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow"

# The documentation site (mkdocs.yml, docs/) into site/: strict, so a broken link or anchor fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

serve: install
	$(BIN)/brainomaly serve

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

clean:
	rm -rf artifacts mlflow.db mlartifacts site
