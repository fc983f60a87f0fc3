"""No progress bars while a model loads from local disk (the zoo, a directory, the hub's cache)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_local_loading(local: bool = True) -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while reading weights from local disk.

    A local model loads in a second or two, and in a notebook each bar is a widget left in the
    stored output of every cell that loads a model. Downloads from the hub keep their bars
    (local=False): there the bar tells the user something.
    """
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    was_enabled, hub_was_disabled = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    if local and was_enabled:
        hf_logging.disable_progress_bar()  # transformers' switch turns the hub's bars off too ...
    try:
        yield
    finally:
        if local and was_enabled:
            hf_logging.enable_progress_bar()
            if hub_was_disabled:  # ... so put the hub's back as the user had them
                hub_utils.disable_progress_bars()
