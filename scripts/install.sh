#!/usr/bin/env bash
# Set up lensutil in ./.venv from a fresh clone. Needs only python3 (with its venv module).
#
#   scripts/install.sh          install, or do nothing if pyproject.toml is unchanged since last time
#   FORCE=1 scripts/install.sh  install again regardless
#
# torch is installed first and on its own: on a machine without an NVIDIA GPU we take a CPU build,
# so that `pip install -e ".[test]"` finds torch already satisfied and never downloads CUDA wheels
# (several GB). The Makefile depends on the stamp file written at the end, whose name carries a hash
# of pyproject.toml: edit the dependencies and the next `make` installs again.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
TORCH_CPU_VERSION="2.13.0+cpu"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

say() { printf '[install] %s\n' "$*"; }

hash="$(python3 -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest()[:12])')"
stamp="$VENV/.installed-$hash"
if [[ -f "$stamp" && -z "${FORCE:-}" ]]; then
    say "up to date ($stamp exists); FORCE=1 to reinstall"
    touch "$stamp"  # newer than pyproject.toml again, so make stops asking
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtual environment $VENV with $(python3 --version)"
    python3 -m venv "$VENV" || {
        say "python3 -m venv failed; on Debian/Ubuntu install the venv module: apt-get install python3-venv"
        exit 1
    }
else
    say "using existing virtual environment $VENV"
fi
py="$VENV/bin/python"
pip=("$py" -m pip)

if nvidia-smi >/dev/null 2>&1; then
    gpu=1
    say "nvidia-smi works: installing torch with CUDA support"
    "${pip[@]}" install torch
else
    gpu=0
    installed_cuda="$("$py" -c 'import torch; print(torch.version.cuda)' 2>/dev/null || echo missing)"
    if [[ "$installed_cuda" == "None" ]]; then
        say "no GPU; a CPU build of torch is already installed: $("$py" -c 'import torch; print(torch.__version__)')"
    else
        say "no GPU (nvidia-smi absent or failing): installing the CPU build torch==$TORCH_CPU_VERSION"
        # pip finds the CPU wheel through its own configuration (find-links) where one is set up;
        # elsewhere PyTorch's CPU index has it.
        if ! "${pip[@]}" install "torch==$TORCH_CPU_VERSION"; then
            say "torch==$TORCH_CPU_VERSION not found by pip's configured sources; trying $TORCH_CPU_INDEX"
            "${pip[@]}" install torch --index-url "$TORCH_CPU_INDEX"
        fi
    fi
fi

say "installing lensutil (editable) with its test dependencies"
"${pip[@]}" install -e ".[test]"

say "checking torch"
"$py" - "$gpu" <<'EOF'
import sys
import torch

gpu = sys.argv[1] == "1"
print(f"[install] torch {torch.__version__}, CUDA build: {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}")
if not gpu and torch.version.cuda is not None:
    sys.exit("[install] error: this machine has no GPU but torch is a CUDA build; "
             "uninstall it (pip uninstall torch) and run scripts/install.sh again")
EOF

rm -f "$VENV"/.installed-*
touch "$stamp"
say "done; wrote $stamp"
