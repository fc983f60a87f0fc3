"""After a large `run_with_cache()`, keep the freed memory for the next one, and give it back when idle.

lensutil's own default (TransformerLens has none). Why: a cache of everything holds hundreds of MiB
(about 745 MiB for SmolLM2-135M on 4 x 128 tokens). When it is dropped, glibc's malloc hands that
memory back to the kernel (allocator.py says how), so the next call in a loop gets fresh pages and
the kernel zero-fills each on first touch: on the 2-core benchmark machine that made a loop of
`run_with_cache()` 1.63x HuggingFace's forward, against 1.08x when the memory is kept.

The policy, in the spirit of jemalloc's "decay" (its dirty pages are purged after `dirty_decay_ms`,
10 s by default):
- A `run_with_cache()` whose CPU tensors total AUTO_MIN_BYTES or more makes glibc keep freed memory
  (allocator.keep_thresholds), and (re)starts an idle clock of IDLE_RELEASE_S seconds.
- The clock stops while any run_with_cache() runs and restarts when it ends, so a forward longer than
  the idle time keeps the memory it is about to reuse.
- When no call has come for that long, a daemon thread gives the memory back (malloc_trim) and
  sets glibc's thresholds to where its own dynamic scheme tops out (32 MiB mmap, 64 MiB trim).
- A cache built while keeping that is dropped after that gets its memory given back too, a moment
  after it is freed: the blocks came from the heap, where an ordinary free would leave them.
- Smaller caches change nothing: below 64 MiB glibc's own scheme keeps freed memory by itself.

It is process-wide while it keeps (HuggingFace's freed memory stays in the process too). It never
acts where the user chose an allocator policy: another malloc preloaded, MALLOC_*_ variables or
glibc.malloc tunables set, or LENSUTIL_KEEP_FREED_MEMORY=0 in the environment. keep_freed_memory()
takes over from it; release_freed_memory() gives the kept memory back at once.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from . import allocator

AUTO_MIN_BYTES = 64 * 2**20  # glibc's dynamic trim threshold tops out at 2 x 32 MiB: below that it keeps memory itself
IDLE_RELEASE_S = 10.0  # jemalloc's default dirty_decay_ms is 10,000
TRIM_DELAY_S = 0.1  # a cache's finalizer runs before its tensors are freed: trim a moment later
ENV_SWITCH = "LENSUTIL_KEEP_FREED_MEMORY"
_USER_POLICY = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


class _State:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.mode = "off" if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "false", "no") else "auto"
        self.keeping = False  # the automatic policy has glibc keeping freed memory now
        self.deadline = 0.0  # monotonic time at which it gives the memory back
        self.trim_at: float | None = None  # a cache built while keeping was freed after it stopped
        self.alive = 0  # caches built while keeping, not freed yet
        self.busy = 0  # run_with_cache() calls under way: the idle clock waits for them
        self.thread: threading.Thread | None = None
        self.blocker: str | None = None  # why the automatic policy cannot act here (computed once)
        self.checked = False


_state = _State()


def _why_not() -> str | None:
    """Why the automatic policy must not touch this process's allocator, or None."""
    if _state.checked:
        return _state.blocker
    chosen = [v for v in _USER_POLICY if v in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        _state.blocker = f"the environment sets the allocator's policy ({', '.join(chosen)})"
    else:
        try:
            allocator.glibc()
        except allocator.AllocatorError as e:
            _state.blocker = str(e).split(";")[0].split(". ")[0]
    _state.checked = True
    return _state.blocker


@contextmanager
def caching() -> Iterator[None]:
    """Around run_with_cache's forward: kept memory is never given back while a cache is being built
    (a forward longer than the idle time would otherwise lose the memory it is about to reuse)."""
    with _state.cond:
        _state.busy += 1
    try:
        yield
    finally:
        with _state.cond:
            _state.busy -= 1
            if _state.keeping:  # the idle clock starts when the call ends
                _state.deadline = max(_state.deadline, time.monotonic() + IDLE_RELEASE_S)
            _state.cond.notify()


def after_cache(tensors: Iterable[torch.Tensor], owner: object) -> None:
    """Called by run_with_cache with the cached tensors and the object that holds them."""
    if _state.mode != "auto":
        return
    if sum(t.nbytes for t in tensors if t.device.type == "cpu") < AUTO_MIN_BYTES or _why_not():
        return
    with _state.cond:
        if _state.mode != "auto":
            return
        if not _state.keeping:
            try:
                allocator.keep_thresholds()
            except allocator.AllocatorError:  # mallopt refused: leave glibc as it is
                return
            _state.keeping = True
        _state.deadline = time.monotonic() + IDLE_RELEASE_S
        _watch(owner)
        if _state.thread is None:
            _state.thread = threading.Thread(target=_run, name="lensutil-release-freed-memory", daemon=True)
            _state.thread.start()
        _state.cond.notify()


def _watch(owner: object) -> None:
    """Count `owner` (the ActivationCache, or a plain dict's first tensor) alive until it is freed."""
    if isinstance(owner, dict):  # return_cache_object=False: a dict takes no weak reference
        owner = next((v for v in owner.values() if isinstance(v, torch.Tensor)), None)
    try:
        done = weakref.finalize(owner, _freed)
    except TypeError:
        return
    done.atexit = False
    _state.alive += 1


def _freed() -> None:
    with _state.cond:
        _state.alive = max(0, _state.alive - 1)
        if not _state.keeping and _state.mode == "auto":
            _state.trim_at = time.monotonic() + TRIM_DELAY_S
            _state.cond.notify()


def _run() -> None:
    """The daemon thread: give the memory back at the deadline, trim after late frees, end when nothing is left."""
    s = _state
    with s.cond:
        while True:
            now = time.monotonic()
            if s.keeping and now >= s.deadline and not s.busy:
                _give_back()
            if s.trim_at is not None and now >= s.trim_at:
                s.trim_at = None
                allocator.trim()
            if not s.keeping and s.trim_at is None and s.alive == 0:
                s.thread = None
                return
            waits = [t - now for t in (s.deadline if s.keeping and not s.busy else None, s.trim_at) if t is not None]
            s.cond.wait(timeout=max(0.0, min(waits)) if waits else None)


def _give_back() -> None:
    """With the lock held: glibc's settled thresholds, and the kept memory back to the kernel."""
    _state.keeping = False
    allocator.settled_thresholds()
    allocator.trim()


def release_freed_memory() -> int:
    """Give the freed memory this process keeps back to the kernel now; returns how far RSS fell (bytes).

    lensutil's own. After a large run_with_cache(), lensutil keeps freed memory for the next one and
    gives it back by itself after IDLE_RELEASE_S idle seconds; call this to do it at once (before
    measuring memory, or before a step that needs it elsewhere). Under keep_freed_memory(True) it gives
    back what is free now and keeps on keeping. It does nothing where glibc's malloc is not in use.
    """
    before = allocator.rss_bytes()
    with _state.cond:
        if _state.keeping:
            _give_back()
            _state.cond.notify()
        elif allocator.glibc_or_none() is not None:
            allocator.trim()
    return max(0, before - allocator.rss_bytes())


def set_mode(mode: str) -> None:
    """keep_freed_memory() switches the policy: "keep" (always), "off" (never), "auto" (this module's)."""
    with _state.cond:
        _state.mode, _state.keeping, _state.trim_at = mode, False, None
        _state.cond.notify()


def status() -> str:
    """One line on what the policy does in this process now (doctor and notebook 11 print it)."""
    s = _state
    if s.mode == "keep":
        return "keep_freed_memory(True): glibc keeps freed memory for reuse until keep_freed_memory(False)"
    if s.mode == "off":
        how = f"{ENV_SWITCH}=0" if os.environ.get(ENV_SWITCH) else "keep_freed_memory(False)"
        return f"automatic keeping off ({how}): glibc's malloc returns freed memory as it decides"
    if blocker := _why_not():
        return f"automatic keeping not used: {blocker}"
    now = (f"keeping now, given back in {max(0.0, s.deadline - time.monotonic()):.0f} s unless another large cache "
           "comes") if s.keeping else "not keeping now"
    return (f"after a run_with_cache() of {AUTO_MIN_BYTES // 2**20} MiB or more, glibc keeps freed memory for the "
            f"next one and gives it back after {IDLE_RELEASE_S:g} s idle ({now})")


def _after_fork_in_child() -> None:
    # The child has no release thread, and the lock may have been held by one at the fork.
    keeping, mode = _state.keeping, _state.mode
    _state.__init__()
    _state.mode = mode
    if keeping:
        allocator.settled_thresholds()
        allocator.trim()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
