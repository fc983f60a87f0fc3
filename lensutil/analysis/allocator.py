"""Keep freed memory for reuse: why `run_with_cache()` of everything page-faults, and glibc's knobs.

lensutil's own (TransformerLens has none; there one sets the environment variables below by hand).

A forward that keeps nothing reuses memory it freed a layer earlier. `run_with_cache()` of every hook
keeps all of it (about 745 MiB for SmolLM2-135M on 4 x 128 tokens), so none can be reused within the
call, and when the cache is dropped glibc's malloc hands it back to the kernel: blocks above its mmap
threshold are `munmap`ed at once, and free memory at the top of the heap above its trim threshold is
given back with `brk`. The next call gets fresh pages, and the kernel zero-fills each one on first touch
(a minor page fault, ~240k per call there against HuggingFace's forward's 0-32k). Raising both
thresholds makes glibc keep freed memory and reuse it; PyTorch's CPU tuning guides suggest jemalloc or
tcmalloc (`LD_PRELOAD`) for the same reason.

The cost: the process's resident memory (RSS) no longer falls when a cache is dropped; it stays at its
peak, and some allocation patterns leave it above (freed blocks that a slightly larger request cannot
use stay held while the heap grows: 256 MiB allocated and freed over and over settled at ~2.2 GiB here).
For one process that reruns the same work that is what you want; for a long-lived process that
caches once and then does something else, call `keep_freed_memory(False)` afterwards, or
`release_freed_memory()` whenever the kept memory is wanted elsewhere.

lensutil never does this by itself: the allocator's policy is the whole process's (HuggingFace's and
every other library's memory too), so changing it is the user's explicit choice, keep_freed_memory().
Measured, it matters less than it looks: against HuggingFace doing the same work (its eager forward with
output_hidden_states=True, output_attentions=True) a loop of run_with_cache() of everything takes about
as long with or without it (benchmarks/README.md; docs/allocator.md has the internals).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

from ..errors import AllocatorError


# mallopt parameters, from glibc's malloc/malloc.h ("mallopt options that actually do something"):
#   #define M_TRIM_THRESHOLD -1    #define M_MMAP_THRESHOLD -3
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's starting values (malloc.c: DEFAULT_TRIM_THRESHOLD and DEFAULT_MMAP_THRESHOLD_MIN, 128 KiB).
DEFAULT_THRESHOLD = 128 * 1024
# mallopt takes an int, so INT_MAX (2 GiB - 1) is the most it can set; the MALLOC_*_ environment
# variables are read as size_t and can go higher.
KEEP_THRESHOLD = 2**31 - 1
# Older glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit; malloc.c's "Forbid
# setting the threshold too high", from mallopt and the MALLOC_MMAP_THRESHOLD_ variable alike); 2.36 (Debian
# 12) takes INT_MAX. This is the most an older one accepts.
OLD_GLIBC_MMAP_MAX = 32 * 2**20

_ENV_HINT = ("MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_MMAP_THRESHOLD_=4000000000 (glibc, set before Python "
             "starts), or LD_PRELOAD=libjemalloc.so.2 / libtcmalloc_minimal.so.4, which keep freed memory by default")


@dataclass(frozen=True)
class AllocatorSettings:
    """What keep_freed_memory() set (bytes), and what it could not undo."""

    keep: bool
    trim_threshold: int
    mmap_threshold: int
    glibc: str
    note: str

    def __str__(self) -> str:
        what = "keeping freed memory" if self.keep else "glibc defaults restored as far as possible"
        return (f"glibc {self.glibc} malloc, {what}: M_TRIM_THRESHOLD={self.trim_threshold}, "
                f"M_MMAP_THRESHOLD={self.mmap_threshold}. {self.note}")


_found: tuple[ctypes.CDLL, str] | None = None


def glibc() -> tuple[ctypes.CDLL, str]:
    """This process's glibc, if its malloc is the one in use (not jemalloc/tcmalloc preloaded over it)."""
    if not sys.platform.startswith("linux"):
        raise AllocatorError(f"keep_freed_memory() tunes glibc's malloc, which this platform ({sys.platform}) "
                             f"does not use. Its allocator keeps or returns freed memory by its own policy; on "
                             f"Linux use keep_freed_memory() or {_ENV_HINT}.")
    try:
        process = ctypes.CDLL(None)
        version = process.gnu_get_libc_version
    except (OSError, AttributeError):
        raise AllocatorError(f"keep_freed_memory() tunes glibc's malloc, and this Linux has another C library "
                             f"(musl?). Use an allocator that keeps freed memory instead: {_ENV_HINT}.") from None
    version.restype = ctypes.c_char_p
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname on x86-64, aarch64 and most other architectures
    except OSError:
        raise AllocatorError(f"glibc {version().decode()} is here but libc.so.6 could not be opened; use "
                             f"{_ENV_HINT}.") from None
    # With an allocator preloaded, `malloc` in the process resolves to it, and glibc's mallopt would tune
    # a malloc nobody calls: say so instead of pretending.
    addr = lambda lib: ctypes.cast(lib.malloc, ctypes.c_void_p).value  # noqa: E731
    if addr(process) != addr(libc):
        raise AllocatorError("malloc in this process is not glibc's (an allocator is preloaded, e.g. jemalloc or "
                             "tcmalloc through LD_PRELOAD), so glibc's thresholds would change nothing. Those "
                             "allocators keep freed memory already; tune them with their own settings "
                             "(jemalloc: MALLOC_CONF).")
    global _found
    libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    _found = libc, version().decode()
    return _found


def glibc_or_none() -> ctypes.CDLL | None:
    try:
        return (_found or glibc())[0]
    except AllocatorError:
        return None


def trim() -> bool:
    """malloc_trim(0): free memory at the heap's top and free whole pages inside it go back to the kernel."""
    libc = glibc_or_none()
    return libc is not None and libc.malloc_trim(0) == 1


def rss_bytes() -> int:
    """This process's resident memory (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def keep_thresholds() -> int:
    """Both thresholds at INT_MAX (the mmap one at 32 MiB on an older glibc); returns the mmap threshold set."""
    libc, version = _found or glibc()
    if not _set(libc, M_TRIM_THRESHOLD, KEEP_THRESHOLD):
        raise AllocatorError(f"glibc {version} refused M_TRIM_THRESHOLD={KEEP_THRESHOLD}; use {_ENV_HINT}.")
    for mmap in (KEEP_THRESHOLD, OLD_GLIBC_MMAP_MAX):  # an older glibc: HEAP_MAX_SIZE / 2 at most
        if _set(libc, M_MMAP_THRESHOLD, mmap):
            return mmap
    raise AllocatorError(f"glibc {version} refused M_MMAP_THRESHOLD={OLD_GLIBC_MMAP_MAX}; use {_ENV_HINT}.")


def _set(libc: ctypes.CDLL, param: int, value: int) -> bool:
    return libc.mallopt(param, value) == 1


def keep_freed_memory(enabled: bool = True) -> AllocatorSettings:
    """Make glibc's malloc keep freed memory for reuse (enabled=True), or go back to its defaults (False).

    lensutil's own, and never done by default. It acts on the whole process from the next allocation on:
    every library's memory (HuggingFace's too), not only lensutil's. Linux with glibc only; elsewhere it
    raises AllocatorError.

    enabled=True sets M_TRIM_THRESHOLD and M_MMAP_THRESHOLD to INT_MAX (2 GiB - 1; mallopt takes an int):
    freed blocks stay in the heap for the next allocation instead of going back to the kernel. Single
    blocks of 2 GiB or more are still mmap'ed, and free memory at the top of the heap beyond 2 GiB is
    still trimmed; the environment variables in the error message go higher. An older glibc caps the
    mmap threshold at 32 MiB; the result says when that cap applied. release_freed_memory() gives what
    is kept back at any time, and keeping goes on.

    enabled=False sets both back to glibc's starting value (128 KiB) and calls malloc_trim(0) to give
    the kept free memory back to the kernel. What cannot be undone: glibc normally raises both
    thresholds by itself as the program frees large mmap'ed blocks (the "dynamic threshold", up to
    32 MiB); any mallopt of them turns that off for the rest of the process, so afterwards blocks of
    128 KiB or more are always mmap'ed. Thresholds from MALLOC_*_ variables at start-up are overridden too.

    The trade-off: RSS stays at its peak after a cache is dropped (sometimes above it, see the module
    docstring); measure with this off.
    """
    if enabled == "auto":  # lensutil's former default, gone (issue 24): say what replaced it
        raise AllocatorError("keep_freed_memory('auto') is gone: lensutil no longer changes the allocator by itself, "
                             "so the default is glibc's malloc as it comes. Call keep_freed_memory(True) to keep "
                             "freed memory, release_freed_memory() to give it back.")
    if enabled not in (True, False):
        raise AllocatorError(f"keep_freed_memory() takes True or False, not {enabled!r}.")
    libc, version = glibc()
    if not enabled:
        ok = _set(libc, M_TRIM_THRESHOLD, DEFAULT_THRESHOLD) and _set(libc, M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
        if not ok:
            raise AllocatorError("glibc's mallopt refused its own default thresholds (128 KiB); nothing to do but "
                                 "restart the process without the MALLOC_*_ variables.")
        released = trim()
        note = ("Kept free memory " + ("given back to the kernel (malloc_trim)." if released else "was none to give back.")
                + " Not undone: glibc's dynamic thresholds stay off for this process (blocks >= 128 KiB are "
                  "always mmap'ed now); restart the process for glibc's own behaviour.")
        return AllocatorSettings(False, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD, version, note)
    mmap = keep_thresholds()
    note = "Freed blocks under 2 GiB stay in the heap; RSS no longer falls when memory is freed."
    if mmap != KEEP_THRESHOLD:
        note = (f"This glibc caps M_MMAP_THRESHOLD at {mmap} bytes: blocks of 32 MiB or more (the logits) are still "
                f"mmap'ed and fault each call; to keep them too, start Python with MALLOC_MMAP_MAX_=0 (no mmap at "
                f"all) or LD_PRELOAD=libjemalloc.so.2.")
    return AllocatorSettings(True, KEEP_THRESHOLD, mmap, version, note)


def release_freed_memory() -> int:
    """Give the freed memory this process keeps back to the kernel now; returns how far RSS fell (bytes).

    lensutil's own: malloc_trim(0), which changes no setting. Under keep_freed_memory(True) call it when
    the kept memory is wanted elsewhere (before measuring memory, or before another step): it gives back
    what is free now and keeping goes on. Without it glibc keeps a little by itself (up to its trim
    threshold), which this gives back too. It does nothing where glibc's malloc is not in use.
    """
    before = rss_bytes()
    trim()
    return max(0, before - rss_bytes())
