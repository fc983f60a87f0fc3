"""A Sphinx extension for the book: pages load nothing from the network.

The notebooks' "Open in Colab" badge is a remote image (Colab's own SVG), which an offline reader
sees as a failed request on every page. The book serves its own copy (book/_static/colab-badge.svg);
the link under the badge still opens Colab. Listed in book/_config.yml (sphinx.local_extensions).
"""

from __future__ import annotations

from docutils import nodes

from lensutil.notebook.setup import COLAB_BADGE_IMAGE

# remote image -> the book's copy, as a path from the book's root (Sphinx reads "/..." that way)
LOCAL_COPIES = {COLAB_BADGE_IMAGE: "/_static/colab-badge.svg"}


def _use_local_copies(app, doctree: nodes.document) -> None:
    for image in doctree.findall(nodes.image):
        local = LOCAL_COPIES.get(image["uri"])
        if local is not None:
            image["uri"] = local


def setup(app):
    # Before Sphinx's image collector (priority 500) records the image and copies its file.
    app.connect("doctree-read", _use_local_copies, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
