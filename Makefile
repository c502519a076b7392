# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
WEIGHTS ?= weights

.PHONY: venv serve test lint clean

# The stamp is rebuilt when pyproject.toml changes, so a stale venv is refreshed automatically.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

serve: venv
	STYLE_TRANSFER_HOST=$(HOST) STYLE_TRANSFER_PORT=$(PORT) STYLE_TRANSFER_WEIGHTS=$(WEIGHTS) \
		$(BIN)/python -m server

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
