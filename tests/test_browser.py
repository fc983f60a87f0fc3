"""The notebooks and the book, the way people use them: in JupyterLab and a real browser.

A JupyterLab server (from this environment, on loopback, its own random token and a free port) serves
a temporary copy of notebooks/, and headless Chromium, driven by Playwright, opens 01_quickstart,
runs every cell from the Run menu, and checks what a person would see: the success line, no error
output, the circuitsvis drawing and the hook explorer answering a click. Then every page of the built
book is opened and must log no JavaScript error and make no failed request, and every picture on it (figure,
circuitsvis view) must render: tests/_book_pictures.py says what a picture is there and how it is checked.

Needs Debian's Chromium (`apt-get install chromium`; .ci/run installs it) and playwright (in the
test extras); without them these tests skip and say why. No browser is downloaded.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from _book_pictures import broken_pictures

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
CHROMIUM = os.environ.get("LENSUTIL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show (other tabs stay in the page, hidden)
RUN_TIMEOUT_S = 600  # the whole quickstart, run from the UI (about a minute on an idle CPU)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium; .ci/run does) "
                    "or set LENSUTIL_CHROMIUM to a Chromium binary")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as err:  # noqa: BLE001 - a browser that cannot start here is a skip, with the reason
            pytest.skip(f"Chromium at {CHROMIUM} does not start here: {str(err).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab from this environment on a temporary copy of notebooks/ (the repository is not touched)."""
    jupyter_lab = Path(sys.executable).with_name("jupyter-lab")
    if not jupyter_lab.exists():
        pytest.skip("jupyterlab is not installed (pip install -e '.[test]')")
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"
    root.mkdir()
    for nb in NOTEBOOKS.glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    port, token = _free_port(), secrets.token_hex(16)  # made up per run, never written to a file
    # Settings, workspaces and runtime files go to the temporary directory, not the user's home; the
    # kernel is this environment's python3 (the notebooks' kernelspec), as with `make lab`.
    # ipykernel aborts the requests queued behind a failing cell only while they are already there
    # (stop_on_error_timeout, 0 s by default): on a loaded machine Run All's next request can arrive later
    # and run. Its own profile gives that window 10 s (2 s was seen to be too short on a machine running
    # two test suites at once), so "the run stopped at the error" is what is tested.
    profile = work / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text("c.Kernel.stop_on_error_timeout = 10.0\n")
    env = dict(os.environ, JUPYTER_PREFER_ENV_PATH="1", JUPYTER_CONFIG_DIR=str(work / "config"),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"), IPYTHONDIR=str(work / "ipython"))
    cmd = [str(jupyter_lab), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                with _LOCAL.open(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 120 s:\n{(work / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "log": work / "server.log"}
    finally:  # whatever happened: stop the server (it shuts its kernels down), then make sure
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _api(lab, path: str):
    with _LOCAL.open(f"{lab['base']}{path}?token={lab['token']}", timeout=10) as r:
        return json.load(r)


def _fresh_copy(path: Path) -> None:
    """Clear the stored outputs, counts and widget state, so everything the browser shows is from this run."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


@contextmanager
def screenshot_on_failure(page, tmp_path: Path, name: str):
    """If the block fails, photograph the page into pytest's tmp_path and print where."""
    try:
        yield
    except BaseException:
        shot = tmp_path / f"{name}-failure.png"
        try:
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the failing page: {shot}")
        except Exception as err:  # noqa: BLE001 - a page that cannot be photographed must not hide the failure
            print(f"no screenshot ({err})")
        raise


def _wait_for_kernel(lab, notebook: str, timeout: float = 120) -> None:
    """Until the server has a session for `notebook` with an idle kernel (the page's indicator says
    "idle" for a moment before the kernel even starts, so it alone cannot be trusted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [s for s in _api(lab, "/api/sessions") if s["path"].endswith(notebook)]
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            return
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not start a kernel for {notebook} within {timeout:.0f} s:\n{lab['log'].read_text()[-3000:]}")


def _run_state(page) -> dict:
    """The notebook's execution state as JupyterLab shows it: prompts, and the kernel indicator."""
    return page.evaluate("""panel => {
        const prompts = [...document.querySelectorAll(panel + ' .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
        const indicator = document.querySelector(panel + ' .jp-Notebook-ExecutionIndicator');
        return {prompts, status: indicator ? indicator.getAttribute('data-status') : null};
    }""", PANEL)


def _wait_for_run(page, started: float) -> list[str]:
    """Wait until the kernel is idle and no cell is queued ([*]); return the input prompts.

    Run All marks every code cell [*] at once, so "none left" means done; a cell that raises stops the
    run and the rest go back to [ ]. Two readings in a row must agree (a new cell can start between)."""
    agreed = 0
    while agreed < 2:
        state = _run_state(page)
        done = state["status"] == "idle" and "[*]:" not in state["prompts"] and state["prompts"][0] != "[ ]:"
        agreed = agreed + 1 if done else 0
        assert time.monotonic() - started < RUN_TIMEOUT_S, f"not finished after {RUN_TIMEOUT_S} s: prompts {state['prompts']}"
        time.sleep(1)
    return state["prompts"]


def _open_and_run_all(page, lab, nb_path: Path) -> dict:
    """Open a notebook in JupyterLab, wait for its kernel, click Run > Run All Cells, wait for the end,
    save it from the UI. Returns what a person would look at: the prompts, the tracebacks shown, the
    last cell's output, and the cells whose saved outputs include an error."""
    notebook = json.loads(nb_path.read_text(encoding="utf-8"))
    n_code = sum(c["cell_type"] == "code" for c in notebook["cells"])
    # A workspace of its own, so that JupyterLab reopens no tab from an earlier test.
    page.goto(f"{lab['base']}/lab/workspaces/{nb_path.stem}/tree/{nb_path.name}?reset&token={lab['token']}",
              wait_until="domcontentloaded")
    _wait_for_kernel(lab, nb_path.name)  # JupyterLab starts the notebook's kernel by itself
    page.wait_for_function(f"n => document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputPrompt').length === n"
                           f" && document.querySelector(\"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']\")",
                           arg=n_code, timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()  # as a person does
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    started = time.monotonic()
    prompts = _wait_for_run(page, started)
    seconds = time.monotonic() - started
    # An error is drawn by the stderr renderer, with its traceback.
    shown = page.locator(f"{PANEL} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Traceback")
    tracebacks = [shown.nth(i).inner_text()[-2000:] for i in range(shown.count())]
    last_output = page.locator(f"{PANEL} .jp-CodeCell").last.locator(".jp-OutputArea-output").all_inner_texts()
    page.keyboard.press("Control+s")  # saved from the UI and read back: the outputs as the kernel sent them
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
    saved = json.loads(nb_path.read_text(encoding="utf-8"))
    errors = [i for i, c in enumerate(saved["cells"]) if any(o["output_type"] == "error" for o in c.get("outputs", []))]
    return {"prompts": prompts, "tracebacks": tracebacks, "last_output": last_output, "saved_errors": errors, "seconds": seconds}


def test_the_harness_sees_a_cell_that_raises(browser, lab, tmp_path):
    """The checks below can fail: a notebook whose middle cell raises is caught by each of them."""
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
             for i, src in enumerate(["print('before')", "raise ValueError('a cell that fails')", "print('all checks passed')"])]
    nb_path = lab["root"] / "broken.ipynb"
    meta = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}}
    nb_path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    page = browser.new_page()
    with screenshot_on_failure(page, tmp_path, "broken"):
        run = _open_and_run_all(page, lab, nb_path)
        assert len(run["tracebacks"]) == 1 and "ValueError: a cell that fails" in run["tracebacks"][0]
        assert run["prompts"][0] == "[1]:" and run["prompts"][2] == "[ ]:"  # the run stopped at the error
        assert not any("all checks passed" in t for t in run["last_output"])
        assert run["saved_errors"] == [1]
    page.close()
    for session in _api(lab, "/api/sessions"):  # its kernel is not needed any more
        if session["path"].endswith(nb_path.name):
            _LOCAL.open(urllib.request.Request(f"{lab['base']}/api/sessions/{session['id']}?token={lab['token']}", method="DELETE"))


def test_quickstart_runs_in_jupyterlab(browser, lab, tmp_path):
    nb_path = lab["root"] / "01_quickstart.ipynb"
    _fresh_copy(nb_path)
    kernel = json.loads(nb_path.read_text(encoding="utf-8"))["metadata"]["kernelspec"]["name"]
    specs = _api(lab, "/api/kernelspecs")["kernelspecs"]
    assert kernel in specs, f"JupyterLab has no kernel {kernel!r} (the notebook's), only {sorted(specs)}: it would ask which to use"

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    with screenshot_on_failure(page, tmp_path, "quickstart"):
        run = _open_and_run_all(page, lab, nb_path)
        print(f"01_quickstart ran from JupyterLab's Run menu in {run['seconds']:.0f} s")
        assert not run["tracebacks"], "a cell shows an error:\n" + "\n".join(run["tracebacks"])
        assert not run["saved_errors"], f"cells {run['saved_errors']} saved an error output"
        # An exercise's solution cell has its input collapsed (jupyter.source_hidden): JupyterLab shows no prompt
        # for it, so the saved notebook's execution counts say whether it ran.
        assert all(p == "" or p[1:-2].isdigit() for p in run["prompts"]), f"not every cell ran: {run['prompts']}"
        saved = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
        assert all(c.get("execution_count") for c in saved if c["cell_type"] == "code"), "a code cell has no execution count"
        assert any("all checks passed" in text for text in run["last_output"]), f"the last cell printed {run['last_output']}"

        # circuitsvis drew its attention view: the element has content and a size.
        view = page.locator("[id^='circuits-vis-']").first
        view.scroll_into_view_if_needed()
        page.wait_for_function("() => { const e = document.querySelector(\"[id^='circuits-vis-']\");"
                               " return e && e.childElementCount > 0 && e.getBoundingClientRect().height > 0; }", timeout=30_000)
        box = view.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, f"circuitsvis view has no size: {box}"

        # The explorer answers its controls: another layer and head redraw the pattern; a gated hook names its flag.
        explorer = page.locator(".lensutil-explorer")
        explorer.scroll_into_view_if_needed()
        pattern = explorer.locator(".lensutil-pattern")
        # JupyterLab renders a long notebook's cells as they scroll into view: wait for the widget's view.
        page.wait_for_function("() => { const e = document.querySelector('.lensutil-explorer .lensutil-pattern');"
                               " return e && e.innerText.includes('layer 0, head 0'); }", timeout=60_000)
        before = pattern.inner_html()
        assert "layer 0, head 0" in pattern.inner_text()
        selects = explorer.locator("select")  # layer, head, hook
        selects.nth(0).select_option(label="1")
        selects.nth(1).select_option(label="2")
        page.wait_for_function("() => document.querySelector('.lensutil-explorer .lensutil-pattern').innerText.includes('layer 1, head 2')",
                               timeout=30_000)
        after = pattern.inner_html()
        assert after != before and after.count("<td") == before.count("<td")  # another head over the same tokens
        selects.nth(2).select_option(label="blocks.0.attn.hook_result")
        page.wait_for_function("() => document.querySelector('.lensutil-explorer .lensutil-hook-info').innerText"
                               ".includes('set_use_attn_result(True)')", timeout=30_000)
        assert not js_errors, f"JavaScript errors in JupyterLab: {js_errors}"
    page.close()


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(scope="module")
def book_html(tmp_path_factory) -> Path:
    """The book, built as tests/test_book.py builds it (offline, warnings as errors; a few seconds)."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        pytest.skip("jupyter-book is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run([str(jupyter_book), "build", str(BOOK), "--path-output", str(out), "--builder", "html",
                             "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out / "_build" / "html"


def _book_pages(book_html: Path) -> list[str]:
    return sorted(p.relative_to(book_html).as_posix() for p in book_html.rglob("*.html")
                  if not {"_static", "_sources", "_images"} & set(p.relative_to(book_html).parts))


def _page_problems(browser, book_html: Path, pages: list[str], tmp_path: Path) -> dict[str, list[str]]:
    """Open each page as a reader would: what the console logs, the requests that fail, and the pictures that
    do not render (tests/_book_pictures.py), page by page."""
    server, base = _serve(book_html)
    problems: dict[str, list[str]] = {}
    try:
        for name in pages:
            found: list[str] = []
            page = browser.new_page()
            page.on("console", lambda m, found=found: found.append(f"console error: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e, found=found: found.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r, found=found: found.append(f"request failed: {r.url} ({r.failure})"))
            page.on("response", lambda r, found=found: found.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
            with screenshot_on_failure(page, tmp_path, name.replace("/", "_")):
                page.goto(base + name, wait_until="networkidle")
                notebook = NOTEBOOKS / f"{Path(name).stem}.ipynb" if name.startswith("notebooks/") else None
                found += broken_pictures(page, notebook)  # figures decoded, views drawn, none left out
                if name == "notebooks/01_quickstart.html" and page.locator(".lensutil-pattern-table").count() != 1:
                    found.append("the hook explorer's HTML snapshot is not on the page")
            if found:
                problems[name] = found
            page.close()
    finally:
        server.shutdown()
    return problems


def test_every_book_page_loads_without_errors(browser, book_html, tmp_path):
    pages = _book_pages(book_html)
    assert "intro.html" in pages and "notebooks/01_quickstart.html" in pages, pages
    problems = _page_problems(browser, book_html, pages, tmp_path)
    assert not problems, "\n".join(f"{name}: {found}" for name, found in problems.items())


def test_book_check_catches_broken_pictures(browser, book_html, tmp_path):
    """Break one picture of each kind in a copy of the book: each is reported, on its page only."""
    book = tmp_path / "html"
    shutil.copytree(book_html, book)
    quickstart, families, memory = (book / "notebooks" / f"{n}.html" for n in
                                    ("01_quickstart", "14_newer_model_families", "11_memory_and_speed"))
    html = quickstart.read_text(encoding="utf-8")
    png = html.split('src="../_images/', 1)[1].split('"', 1)[0]
    (book / "_images" / png).write_bytes(b"not a PNG")  # served with HTTP 200, and no console error: decodes to nothing
    assert html.count("CircuitsVis.render(") == 1
    quickstart.write_text(html.replace("CircuitsVis.render(", "(() => null)("), encoding="utf-8")  # never drawn
    html = families.read_text(encoding="utf-8")
    assert html.count('src="../_images/') == 1
    families.write_text(html.replace('src="../_images/', 'src="../_images/missing-'), encoding="utf-8")
    html = memory.read_text(encoding="utf-8")
    start = html.rindex("<img ", 0, html.index('src="../_images/'))
    memory.write_text(html[:start] + html[html.index(">", start) + 1:], encoding="utf-8")  # the figure left out
    names = [f"notebooks/{p.name}" for p in (quickstart, families, memory)] + ["intro.html"]
    problems = _page_problems(browser, book, names, tmp_path)
    assert sorted(problems) == sorted(names[:3]), problems
    bad_png, blank_view = problems[names[0]]
    assert bad_png == f'<img src="../_images/{png}"> did not load as an image (naturalWidth 0)', bad_png
    assert blank_view.startswith("circuitsvis #circuits-vis-") and "x0 px once scrolled into view" in blank_view, blank_view
    assert any("missing-" in p and "did not load as an image" in p for p in problems[names[1]]), problems[names[1]]
    assert problems[names[2]] == ["1 img picture(s) in 11_memory_and_speed.ipynb's outputs, 0 on the page"], problems
