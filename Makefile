# Set-up and the two quick-start commands. Everything installs into .venv with exact pins from
# constraints.txt (torch 2.13.0: the CPU wheel; any other torch request pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint bench model clean

$(BIN)/alignlab: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(BIN)/alignlab

setup: $(BIN)/alignlab

demo: setup
	$(BIN)/alignlab demo

test: setup
	$(BIN)/python -m pytest -q

# DPO throughput on the ~30M model: alignlab with prefix sharing on and off, and TRL tuned and default
# (about 20 minutes on 2 cores, most of it TRL's defaults; installs TRL into .venv; not part of the tests).
bench: setup
	$(BIN)/python bench/dpo_throughput.py --model small --pairs 128 --steps 6 --trl-default-steps 2 --vs trl

lint: setup
	$(BIN)/ruff check alignlab tests bench

# Rebuild the embedded model from its generated corpus (about 11 minutes on 2 cores).
model: setup
	$(BIN)/python -m alignlab.assets.build.tiny_model --out alignlab/assets/tiny-llama

clean:
	rm -rf $(VENV) runs .pytest_cache
