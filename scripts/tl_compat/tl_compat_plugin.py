"""pytest plugin for `make tl-compat`: TransformerLens 2.18's own tests, run unchanged against lensutil.

Loaded with `-p tl_compat_plugin` (scripts/tl_compat on PYTHONPATH). Before collection it calls
lensutil.transformer_lens.use_as_transformer_lens(), so the tests' `import transformer_lens` gets
lensutil. It closes the network and prints the figures at the end.

Which tests count (the rules, stated once):
- Needs the model hub: a test that, run here, tries to open a network connection (any host but this
  machine) or fails with an error caused by such an attempt or by lensutil's ModelAccessError (the
  hub's errors), anywhere in the error's chain (a shared fixture's refused download, re-raised by
  pytest for each test that uses it, counts for each of them). It is left out of the
  figures and counted apart. A test file that reaches for the hub while being imported (a model
  loaded at module level) is left out whole; its tests are counted from its source (`def test_`).
- Skipped by TransformerLens' own marks (no CUDA device, LIT not installed, ...): left out, counted apart.
- Everything else counts: passed, or failed (a failure, an error in set-up, or the file failing to
  import, whose tests are then counted from its source as failed).
- Public behaviour vs TransformerLens internals: a test file tests internals when it imports one of
  TransformerLens' building-block modules (components, factories, pretrained, utilities,
  loading_from_pretrained, lit) or sits under tests/unit/{components,factories,
  pretrained_weight_conversions,utilities}; every other file tests public behaviour (what its
  top-level names, hook_points, utils, patching, evals and head_detector promise).
"""

from __future__ import annotations

import os
import re
import socket
from collections import defaultdict

import pytest

_INTERNAL_IMPORT = re.compile(
    r"transformer_lens\.(components|factories|pretrained|utilities|loading_from_pretrained|lit)\b"
    r"|from transformer_lens import [^\n]*\b(components|factories|loading_from_pretrained|lit)\b"
)
_INTERNAL_DIRS = ("unit/components/", "unit/factories/", "unit/pretrained_weight_conversions/", "unit/utilities/")
_LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class _Tally:
    def __init__(self) -> None:
        self.current: str | None = None  # the test (or file being imported) now running
        self.reached_hub: set[str] = set()
        self.outcome: dict[str, str] = {}
        self.broken_files: dict[str, bool] = {}  # file that failed to import -> did it reach for the hub


TALLY = _Tally()


class HubClosedError(OSError):
    """Raised where a test opens a connection: the hub is not reachable in tl-compat runs."""


def _refuse(host) -> None:
    if str(host) in _LOCAL or str(host).startswith("127."):
        return
    if TALLY.current is not None:
        TALLY.reached_hub.add(TALLY.current)
    raise HubClosedError(f"tl-compat: the network is closed (tried to reach {host})")


def _close_network() -> None:
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        _refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(address[0])
        return real_connect(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect


class _NoWaitTime:
    """huggingface_hub's `time`, less the waits between retries (every retry meets the closed network)."""

    def __getattr__(self, name):
        import time

        return getattr(time, name)

    @staticmethod
    def sleep(seconds) -> None:
        return None


def _skip_hub_retry_waits() -> None:
    # huggingface_hub retries a refused connection 5 times with waits of 1+2+4+8+8 s: ~23 s per test
    # that reaches for the hub, ~18 min a run. The retries still happen (so a test reaches for the hub
    # exactly as before and is classified the same); only the waits between them are dropped.
    try:
        from huggingface_hub.utils import _http
    except ImportError:
        return
    _http.time = _NoWaitTime()


def pytest_configure(config) -> None:
    import lensutil.transformer_lens

    lensutil.transformer_lens.use_as_transformer_lens()
    _close_network()
    _skip_hub_retry_waits()


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    TALLY.current = str(getattr(collector, "path", "")) if isinstance(collector, pytest.Module) else None
    report = yield
    if isinstance(collector, pytest.Module) and report.get_result().failed:
        TALLY.broken_files[str(collector.path)] = TALLY.current in TALLY.reached_hub
    TALLY.current = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    TALLY.current = item.nodeid
    yield
    TALLY.current = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.excinfo is not None:
        from lensutil.errors import ModelAccessError

        if _caused_by_hub(call.excinfo.value, (ModelAccessError, HubClosedError)):
            TALLY.reached_hub.add(item.nodeid)


def _caused_by_hub(error: BaseException, hub_errors) -> bool:
    # The whole chain (__cause__ / __context__), not the top error only: a fixture shared by several
    # tests (scope="class" or "module") tries the hub once, and pytest re-raises that same error for
    # every later test that uses it, with no new connection; transformers wraps the refusal in an
    # OSError of its own. Each of those tests needs the hub as much as the first.
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, hub_errors):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def pytest_runtest_logreport(report) -> None:
    before = TALLY.outcome.get(report.nodeid)
    if report.failed:
        TALLY.outcome[report.nodeid] = "failed"
    elif report.skipped and before is None:
        TALLY.outcome[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and before is None:
        TALLY.outcome[report.nodeid] = "passed"


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _is_internal(path: str, text: str) -> bool:
    return any(d in path.replace(os.sep, "/") for d in _INTERNAL_DIRS) or bool(_INTERNAL_IMPORT.search(text))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    root = str(config.rootpath)
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for nodeid, outcome in TALLY.outcome.items():
        kind = "hub" if nodeid in TALLY.reached_hub else outcome
        rows[_file_of(nodeid)][kind] += 1
    for path, hub in TALLY.broken_files.items():
        rel = os.path.relpath(path, root)
        n = len(re.findall(r"^\s*def test_", _read(path), flags=re.M))
        rows[rel]["hub" if hub else "failed"] += n
        rows[rel]["import_error"] = 1
    totals = {"public": defaultdict(int), "internal": defaultdict(int)}
    write = terminalreporter.write_line
    write("")
    write("TransformerLens 2.18's tests against lensutil (rules: scripts/tl_compat/tl_compat_plugin.py)")
    write(f"{'file':62s} {'kind':8s} {'passed':>7s} {'of':>4s}  {'hub':>4s} {'skip':>4s}")
    for rel in sorted(rows):
        row = rows[rel]
        kind = "internal" if _is_internal(rel, _read(os.path.join(root, rel))) else "public"
        counted = row["passed"] + row["failed"]
        for key in ("passed", "failed", "hub", "skipped"):
            totals[kind][key] += row[key]
        note = "  (failed to import)" if row.get("import_error") else ""
        write(f"{rel:62s} {kind:8s} {row['passed']:7d} {counted:4d}  {row['hub']:4d} {row['skipped']:4d}{note}")
    both = {k: totals["public"][k] + totals["internal"][k] for k in ("passed", "failed", "hub", "skipped")}
    for label, t in (("public behaviour", totals["public"]), ("TL internals", totals["internal"]), ("overall", both)):
        counted = t["passed"] + t["failed"]
        pct = 100.0 * t["passed"] / counted if counted else 0.0
        write(f"{label:18s}: {t['passed']} of {counted} pass ({pct:.1f}%); left out: {t['hub']} need the hub, "
              f"{t['skipped']} skipped by TL's own marks")
