#!/usr/bin/env bash
# Run TransformerLens v2.18.0's offline tests (unit, integration, acceptance), unchanged, against lensutil.
# Usage: scripts/tl-compat.sh <path to a v2.18.0 checkout's tests>   (make tl-compat TL_TESTS=... calls this)
# scripts/fetch-tl-tests.sh gets such a checkout. TL's test-only dependencies go into .tl-compat/
# (pip --target, never into .venv). The figures and the rules behind them are printed at the end
# (scripts/tl_compat/tl_compat_plugin.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${LENSUTIL_BIN:-$ROOT/.venv/bin}
TESTS=${1:-}
if [[ -z "$TESTS" || ! -d "$TESTS/unit" || ! -d "$TESTS/integration" || ! -d "$TESTS/acceptance" ]]; then
  echo "tl-compat: give the tests folder of a TransformerLens v2.18.0 checkout (it holds unit/, integration/," >&2
  echo "  acceptance/): make tl-compat TL_TESTS=/path/to/TransformerLens/tests" >&2
  echo "  (scripts/fetch-tl-tests.sh clones it at v2.18.0 and prints that path)" >&2
  exit 2
fi
TESTS=$(cd "$TESTS" && pwd)
DEPS=$ROOT/.tl-compat
STAMP=$DEPS/.installed-$(sha256sum scripts/tl_compat/requirements.txt | cut -c1-12)
if [[ ! -e "$STAMP" ]]; then
  rm -rf "$DEPS"
  "$BIN/pip" install --quiet --target "$DEPS" --no-deps -r scripts/tl_compat/requirements.txt
  touch "$STAMP"
fi
# HF_HUB_OFFLINE is left unset on purpose: a test that reaches for the hub must try, so the plugin
# sees it and leaves it out (its rule); the plugin closes the network, so nothing is downloaded.
PYTHONPATH="$ROOT:$ROOT/scripts/tl_compat:$DEPS${PYTHONPATH:+:$PYTHONPATH}" \
  "$BIN/pytest" -c scripts/tl_compat/pytest.ini --rootdir "$TESTS/.." -p tl_compat_plugin -q --tb=line \
  "$TESTS/unit" "$TESTS/integration" "$TESTS/acceptance" "${@:2}" || true
