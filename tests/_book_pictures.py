"""What the book's pictures are, and a check, run in the browser, that each one renders.

The notebooks draw four kinds of picture, and the book shows each one its own way:

- matplotlib figures (`image/png` outputs; `image/svg+xml` and `image/jpeg` would go the same way): myst-nb writes
  them to `_images/` and the page shows an `<img>`;
- circuitsvis views (`text/html` with the CircuitsVis bundle inlined): a `<div id="circuits-vis-...">` that a script
  on the page fills in, so a view that fails to draw is an empty, zero-height div with no error in the console;
- plotly figures (none yet): a `.plotly-graph-div` drawn the same way;
- inline `<svg>` in an HTML output (none yet outside circuitsvis).

A broken picture can leave the console quiet: a PNG whose bytes are not an image loads with HTTP 200 and no error,
and draws nothing. So each picture is scrolled into view (images load lazily, and a view may draw only once seen)
and must have a size there; each `<img>` must also have decoded (`naturalWidth > 0`).
"""

from __future__ import annotations

import json
from pathlib import Path

# Output MIME types the book shows as an <img> in the cell's output.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def expected_pictures(notebook: Path) -> dict[str, int]:
    """How many pictures of each kind the notebook's stored outputs hold (what its page must show)."""
    counts = {"img": 0, "circuitsvis": 0, "plotly": 0}
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if any(kind in data for kind in IMAGE_TYPES):
                counts["img"] += 1
            html = "".join(data.get("text/html", []))
            counts["circuitsvis"] += "CircuitsVis.render(" in html
            counts["plotly"] += "Plotly.newPlot(" in html
    return counts


# Runs in the page; returns what it found and the problems (one line each, naming the picture).
CHECK_PICTURES_JS = """async () => {
    const sleep = ms => new Promise(done => setTimeout(done, ms));
    const until = async (ok, ms) => {
        const end = Date.now() + ms;
        while (!ok() && Date.now() < end) await sleep(100);
        return ok();
    };
    const sized = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
    const shown = el => { el.scrollIntoView({block: 'center'}); };
    // Collapsed parts of a page (a hidden solution's input) open first: what is inside must render too.
    document.querySelectorAll('details').forEach(d => { d.open = true; });
    const problems = [];
    const found = {img: 0, circuitsvis: 0, plotly: 0, svg: 0};
    for (const img of [...document.images]) {
        shown(img);
        await until(() => img.complete, 10000);
        const name = `<img src="${img.getAttribute('src')}">`;
        if (img.closest('.cell_output')) found.img += 1;
        if (!img.complete || img.naturalWidth === 0) problems.push(`${name} did not load as an image (naturalWidth 0)`);
        else if (!sized(img)) problems.push(`${name} has no size on the page`);
    }
    const views = [
        ['circuitsvis', "[id^='circuits-vis-']"],
        ['plotly', '.plotly-graph-div'],
        // Top-level inline SVG in an output, outside the views above (their own SVG is checked through them).
        ['svg', ".cell_output svg:not(svg svg):not([id^='circuits-vis-'] svg):not(.plotly-graph-div svg)"],
    ];
    for (const [kind, selector] of views) {
        for (const el of [...document.querySelectorAll(selector)]) {
            if (kind === 'svg' && !el.closest('.output.text_html')) continue;  // icons of the theme, not figures
            found[kind] += 1;
            shown(el);
            if (!(await until(() => sized(el), 20000))) {  // drawn by script, on a busy machine
                const r = el.getBoundingClientRect();
                problems.push(`${kind} ${el.id ? '#' + el.id : selector} is ${r.width}x${r.height} px once scrolled into view`);
            }
        }
    }
    return {found, problems};
}"""


def broken_pictures(page, notebook: Path | None) -> list[str]:
    """The problems with the pictures on a loaded page; against the notebook's outputs when it is one."""
    result = page.evaluate(CHECK_PICTURES_JS)
    problems = list(result["problems"])
    if notebook is not None:
        for kind, want in expected_pictures(notebook).items():
            if result["found"][kind] != want:
                problems.append(f"{want} {kind} picture(s) in {notebook.name}'s outputs, {result['found'][kind]} on the page")
    return problems
