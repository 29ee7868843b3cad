# The two commands: `make run` (install, then the whole pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast serve mlflow-ui clean

install: $(STAMP)

# torch first, so the project's `torch>=...` range is already met and pulls nothing more.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

test-fast: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow"

serve: install
	$(BIN)/brainomaly serve

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

clean:
	rm -rf artifacts mlflow.db mlartifacts
