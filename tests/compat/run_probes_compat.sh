#!/usr/bin/env bash
# Runs tests/test_probes_tl_compat.py under TransformerLens 2.x and 3.x (HookedTransformer), each
# in its own small venv (.venv-tl2, .venv-tl3) with the same CPU torch wheel as the main venv.
# A venv is built once and rebuilt only when its pins change. Called by `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
TORCH=${TORCH:-torch==2.13.0}

run() {  # run VENV PIN...: make VENV with torch + PINs + pytest, then run the compat tests in it
  local venv=$1; shift
  local want="$TORCH $* pytest"
  if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "$want" ]; then
    echo "== building $venv: $want"
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    # shellcheck disable=SC2086  # $want is a list of pins
    "$venv/bin/pip" install -qq $want
    echo "$want" > "$venv/.installed"
  fi
  echo "== $venv: transformer-lens $("$venv/bin/python" -c 'from importlib.metadata import version as v; print(v("transformer-lens"))')"
  PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest \
    tests/test_probes_tl_compat.py
}

# TL 2.x pins numpy < 2; pyarrow 22+ needs numpy 2 (and datasets 5 needs pyarrow >= 21).
run .venv-tl2 "transformer-lens==2.18.0" "pyarrow==21.*"
run .venv-tl3 "transformer-lens==3.9.0"
