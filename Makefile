# Two commands set everything up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
WEIGHTS ?= weights

.PHONY: venv serve test clean zoo zoo-background container-check

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

# The shipped models (weights/zoo.toml): train unfinished runs in order (resuming), shipping each when done.
zoo: venv
	$(BIN)/style-transfer zoo train --export

# The same, detached from the terminal, so closing it loses nothing; progress: runs/zoo/train.log.
zoo-background: venv
	mkdir -p runs/zoo
	setsid nohup $(MAKE) zoo > runs/zoo/train.log 2>&1 < /dev/null & echo "training in the background; log: runs/zoo/train.log"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Build the Dockerfile with podman, run the image, check /readyz, one stylize and a non-root user
# (README, Docker). Not part of .ci/run: ~5 minutes and ~7 GB of disk the first time.
container-check:
	../shared/tools/container-check.sh
