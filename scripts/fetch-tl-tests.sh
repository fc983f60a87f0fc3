#!/usr/bin/env bash
# Fetch TransformerLens' tests at v2.18.0 (its PyPI sdist has none) for `make tl-compat`; needs the network.
# Usage: scripts/fetch-tl-tests.sh [folder]   (default .tl-compat-src); prints the TL_TESTS path to pass.
set -euo pipefail
DEST=${1:-.tl-compat-src}
if [[ ! -d "$DEST/.git" ]]; then
  git clone --quiet --depth 1 --branch v2.18.0 https://github.com/TransformerLensOrg/TransformerLens "$DEST"
fi
echo "make tl-compat TL_TESTS=$(cd "$DEST" && pwd)/tests"
