"""Helpers for the first cells of lensutil's notebooks.

A notebook's first code cell is ``colab_install_cell()``: in Google Colab it pip-installs lensutil
*before* anything imports it (so it cannot itself import lensutil), elsewhere it does nothing.
Its "Open in Colab" badge is ``colab_badge(filename)``. Both are built from ``PROJECT_URL``, the
one place the project's address is written: after changing it, run
``python scripts/sync_notebook_urls.py`` (tests/test_notebook_setup.py checks that they agree).

A notebook that needs a GPU or the internet calls ``requires(gpu=True)``. The test harness reads
the same needs from the notebook's metadata (``metadata.lensutil.requires = ["gpu"]``) to skip,
rather than fail, where they are missing.
"""

from __future__ import annotations

import os
import socket
import sys

from ..errors import ConfigError

# The project's public home (a GitHub repository: Colab opens notebooks from GitHub), written only
# here. Colab installs lensutil from it and the badges point into it; the badges work once the
# repository is published at this address. Change it here, then run scripts/sync_notebook_urls.py.
PROJECT_URL = "https://github.com/lensutil/lensutil"
PROJECT_BRANCH = "main"  # the branch the badges open
PIP_SPEC = f"lensutil[notebooks] @ git+{PROJECT_URL}"
_GITHUB = "https://github.com/"
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"  # what older notebooks showed
COLAB_LINK_MARK = "https://colab.research.google.com/github/"  # in the "Open in Colab" line, old and new

# Colab's kernels import google.colab at start-up and set COLAB_RELEASE_TAG. The install cell spells
# this test out itself (it runs before lensutil exists); in_colab() below is the same test.
_COLAB_TEST = '"google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ'


def in_colab() -> bool:
    """True inside Google Colab (its kernels import google.colab and set COLAB_RELEASE_TAG)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def colab_install_cell() -> str:
    """The source of every notebook's first code cell.

    It must not import lensutil (in Colab lensutil is not installed yet), so it is plain Python
    plus IPython's ``%pip`` magic, which installs into the running kernel's environment.
    Outside Colab the condition is false and the cell prints nothing.
    """
    return (
        "# Google Colab: install lensutil (and the notebook extras) before anything imports it.\n"
        "# Anywhere else it does nothing (to install lensutil on your own machine, see the README).\n"
        "import os\n"
        "import sys\n"
        "\n"
        f"if {_COLAB_TEST}:\n"
        f'    %pip install --quiet "{PIP_SPEC}"'
    )


def colab_url(notebook: str) -> str:
    """Colab's address for ``notebooks/<notebook>`` in the project's repository."""
    if not PROJECT_URL.startswith(_GITHUB):
        raise ConfigError(f"lensutil.notebook.setup.PROJECT_URL must be a GitHub repository ({_GITHUB}owner/name): "
                          f"Colab opens notebooks only from GitHub. It is {PROJECT_URL!r}; change it there.")
    repo = PROJECT_URL[len(_GITHUB):].rstrip("/")
    return f"https://colab.research.google.com/github/{repo}/blob/{PROJECT_BRANCH}/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    """The markdown "Open in Colab" line for ``notebooks/<notebook>`` (e.g. "01_quickstart.ipynb").

    A text link, not Colab's badge image: offline (a workshop room, JupyterLab on a laptop) the remote
    image is a broken-image icon, while a link reads the same everywhere and only needs the internet when clicked.
    """
    return f"**[Open in Colab]({colab_url(notebook)})** (needs the internet)"


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
