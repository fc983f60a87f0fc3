"""Helpers for the first cells of lensutil's notebooks.

A notebook's first code cell calls ``setup_colab()`` (installs lensutil when running in Google
Colab, does nothing elsewhere) and, if it needs a GPU or the internet, ``requires(gpu=True)``.
The test harness reads the same needs from the notebook's metadata
(``metadata.lensutil.requires = ["gpu"]``) to skip, rather than fail, where they are missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

# Where Colab installs lensutil from. The project's public home is not settled; change it here.
PROJECT_URL = "https://github.com/lensutil/lensutil"
PIP_SPEC = f"lensutil[notebooks] @ git+{PROJECT_URL}"


def in_colab() -> bool:
    """True inside Google Colab (its kernels import google.colab and set COLAB_RELEASE_TAG)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def setup_colab() -> None:
    """In Colab, pip-install lensutil and the notebook extras; elsewhere do nothing."""
    if not in_colab():
        return
    print(f"Colab detected: installing {PIP_SPEC}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", PIP_SPEC], check=True)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_internet(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def requires(gpu: bool = False, internet: bool = False) -> bool:
    """Say what this notebook needs. Prints why for each missing need; returns True if all are met.

    Declare the same needs in the notebook's metadata (``lensutil.requires``) so that the tests
    skip the notebook on machines that lack them.
    """
    missing = []
    if gpu and not _has_gpu():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False); in Colab: Runtime > Change runtime type > GPU")
    if internet and not _has_internet():
        missing.append("internet access (huggingface.co:443 is unreachable)")
    for reason in missing:
        print(f"This notebook needs {reason}. Cells that depend on it will fail here.")
    return not missing
