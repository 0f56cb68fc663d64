# The two set-up commands: `make serve` and `make test` each do the whole set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
EMOJI_FONT ?= /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
# torch first, pinned to the CPU wheel: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# the deployment checks' own venv: checkov's dependencies would pin the service's
TOOLS ?= .tools
TOOLS_STAMP := $(TOOLS)/.installed
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: help install tools data browser test lint format serve container container-gpu deploy-up deploy-retrain deploy-down \
	deploy-check bench-train clean

help:
	@echo "make serve        set up and serve the default model on http://127.0.0.1:3000"
	@echo "make test         set up and run the linters and the whole test suite"
	@echo "make container    build the bento and its image, run it, check /readyz and /generate, stop it"
	@echo "make container-gpu  the same for bentofile.gpu.yaml (onnxruntime-gpu, CUDA and cuDNN from pip)"
	@echo "make deploy-up    replicas behind a balancer on 127.0.0.1:\$$DEPLOY_PORT (8080), one shared model store"
	@echo "make deploy-retrain ARGS='retrain ...'   the retrain job once, against that store"
	@echo "make deploy-down  remove every container deploy-up started"
	@echo "make deploy-check up, promote, roll back and crash a replica under load, with figures; down"
	@echo "make bench-train  training throughput against a plain PyTorch loop"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[train,dev]" -e ./client
	touch $@

install: $(STAMP)

$(TOOLS_STAMP): deploy/tools.txt
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet -r deploy/tools.txt
	touch $@

tools: $(TOOLS_STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package, the emoji (data.kind=emoji) from
# fonts-noto-color-emoji; install them when missing and possible.
data:
	@if [ ! -f "$(FASHION_MNIST)/train-images-idx3-ubyte.gz" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "Fashion-MNIST is missing: installing dataset-fashion-mnist with apt-get"; \
	    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } || true; \
	  fi; \
	fi; \
	if [ ! -f "$(FASHION_MNIST)/train-images-idx3-ubyte.gz" ]; then \
	  echo "error: Fashion-MNIST is not in $(FASHION_MNIST) and could not be installed here." >&2; \
	  echo "       Install it as root with: apt-get install -y dataset-fashion-mnist" >&2; \
	  exit 1; \
	fi; \
	if [ ! -f "$(EMOJI_FONT)" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "Noto Color Emoji is missing: installing fonts-noto-color-emoji with apt-get"; \
	    apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q fonts-noto-color-emoji >/dev/null; } || true; \
	  fi; \
	fi; \
	if [ ! -f "$(EMOJI_FONT)" ]; then \
	  echo "error: Noto Color Emoji is not at $(EMOJI_FONT) and could not be installed here." >&2; \
	  echo "       Install it as root with: apt-get install -y fonts-noto-color-emoji" >&2; \
	  exit 1; \
	fi

# The web page is tested in Debian's Chromium, driven through its chromedriver.
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium and chromium-driver with apt-get for the page test"; \
	    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || true; \
	  fi; \
	fi; \
	command -v chromium >/dev/null 2>&1 || \
	  echo "warning: no chromium; the page test will be skipped (apt-get install -y chromium chromium-driver)" >&2

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install tools data browser lint
	GANSERVE_TOOLS=$(TOOLS) $(BIN)/pytest

# Serves production from the BentoML store; the shipped default model becomes production if there is none.
serve: install
	$(BIN)/ganserve import models/default --promote-if-empty
	$(BIN)/bentoml serve service.service:GANServe --host $(HOST) --port $(PORT)

# Build the bento and its image (podman, or Docker where a daemon runs), run it on 127.0.0.1, check it, stop it.
container: install tools
	BIN=$(BIN) bash scripts/container.sh

# The GPU variant's image (onnxruntime-gpu with CUDA and cuDNN from pip: several GB), checked the same way; without
# a GPU it runs on onnxruntime's CPU provider and says so.
container-gpu: install tools
	BIN=$(BIN) BENTOFILE=bentofile.gpu.yaml TAG=ganserve-gpu:latest MAX_MB=12000 bash scripts/container.sh

# ganserve on this host with podman-compose (deploy/compose.yaml): the images are built when missing
DEPLOY_PORT ?= 8080
ARGS ?= retrain --runs-dir /var/lib/ganserve/runs --no-progress
deploy-up: install tools
	BIN=$(BIN) DEPLOY_PORT=$(DEPLOY_PORT) bash scripts/deploy.sh up

deploy-retrain: install tools
	BIN=$(BIN) DEPLOY_PORT=$(DEPLOY_PORT) bash scripts/deploy.sh retrain $(ARGS)

deploy-down:
	BIN=$(BIN) bash scripts/deploy.sh down

deploy-check: install tools
	BIN=$(BIN) DEPLOY_PORT=$(DEPLOY_PORT) $(BIN)/python scripts/deploy_check.py

bench-train: install data
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache *.egg-info
