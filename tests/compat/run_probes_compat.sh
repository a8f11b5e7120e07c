#!/usr/bin/env bash
# Runs tests/test_probes_tl_compat.py under TransformerLens 2.x and 3.x (HookedTransformer, and a
# TL 3 TransformerBridge), each in its own small venv (.venv-tl2, .venv-tl3) with the same torch
# wheel as the main venv (pip's cache holds it after `make install`). The two venvs are built in
# parallel, once, and rebuilt only when their pins change. Called by `make test`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
TORCH=${TORCH:-torch==2.13.0}
# TL 2.x pins numpy < 2; pyarrow 22+ needs numpy 2 (and datasets 5 needs pyarrow >= 21).
TL2="transformer-lens==2.18.0 pyarrow==21.*"
TL3="transformer-lens==3.9.0"

build() {  # build VENV PINS: a venv with torch + PINS + pytest, unless it already has them
  local venv=$1 want="$TORCH $2 pytest"
  if [ -f "$venv/.installed" ] && [ "$(cat "$venv/.installed")" = "$want" ]; then
    return 0
  fi
  echo "== building $venv: $want"
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  # shellcheck disable=SC2086  # $want is a list of pins
  "$venv/bin/pip" install -qq $want
  echo "$want" > "$venv/.installed"
}

check() {  # check VENV: the compat tests with only torch, TL and dualform/probes.py
  local venv=$1
  echo "== $venv: transformer-lens $("$venv/bin/python" -c \
    'from importlib.metadata import version; print(version("transformer-lens"))')"
  PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest \
    tests/test_probes_tl_compat.py
}

build .venv-tl2 "$TL2" & tl2=$!
build .venv-tl3 "$TL3" & tl3=$!
wait "$tl2"
wait "$tl3"
check .venv-tl2
check .venv-tl3
