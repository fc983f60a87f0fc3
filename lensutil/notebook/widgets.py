"""Click instead of type: an explorer of one model's attention and hooks, built on ipywidgets.

``HookExplorer(model, prompt)`` runs the prompt once with a cache and shows two panels:

- **attention**: pick a layer and a head, see that head's pattern over the prompt's tokens (a
  ``[query_pos, key_pos]`` heat map; each row sums to 1, hover a cell for its weight);
- **hooks**: pick any hook name, see the shape of its activation on this prompt and whether a
  config flag gates it (``model.hook_flag``: a gated hook whose flag is off never fires, and the
  panel says which ``model.set_use_*`` call turns it on).

This is lensutil's own: TransformerLens has no widgets (its users draw patterns with circuitsvis
and list ``model.hook_dict``). The widget needs a live kernel; where widgets cannot show (a static
page such as the book) the same display carries an HTML snapshot of the first view.

Axes: ``pos`` token position (query or key), ``head_index`` attention head.
"""

from __future__ import annotations

import html

from ..config import FLAG_GATED_HOOKS
from ..errors import ConfigError


_NEEDS_IPYWIDGETS = ("lensutil.notebook.widgets needs ipywidgets (and a Jupyter front end to show them): "
                     "pip install 'lensutil[notebooks]', or pip install ipywidgets")


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as e:
        raise ConfigError(_NEEDS_IPYWIDGETS) from e
    return ipywidgets


def _token_label(token: str) -> str:
    # Leading spaces and newlines are part of a token: show them rather than lose them.
    return html.escape(token.replace("\n", "\\n").replace(" ", "\u2423"))


def pattern_html(pattern, str_tokens: list[str], title: str = "") -> str:
    """A ``[query_pos, key_pos]`` attention pattern as an HTML heat map (plain HTML, no script)."""
    labels = [_token_label(t) for t in str_tokens]
    if tuple(pattern.shape) != (len(labels), len(labels)):
        raise ConfigError(f"pattern_html wants a [query_pos, key_pos] pattern over the {len(labels)} tokens; "
                          f"got shape {tuple(pattern.shape)}. Pass cache[f'blocks.{{layer}}.attn.hook_pattern'][0, head].")
    cell = "width:18px;height:18px;padding:0;border:1px solid #eee"
    head_row = "".join(f'<th style="writing-mode:vertical-rl;font-weight:normal;padding:2px">{t}</th>' for t in labels)
    rows = []
    for q, row in enumerate(pattern.tolist()):
        cells = "".join(
            f'<td style="{cell};background:rgba(33,102,172,{p:.3f})" title="{labels[q]} \u2192 {labels[k]}: {p:.3f}"></td>'
            for k, p in enumerate(row))
        rows.append(f'<tr><th style="text-align:right;font-weight:normal;padding:0 4px">{labels[q]}</th>{cells}</tr>')
    caption = f"<caption style='caption-side:top;text-align:left'>{html.escape(title)} (rows: queries, columns: keys)</caption>"
    return (f'<table class="lensutil-pattern-table" style="border-collapse:collapse;font-family:monospace;font-size:11px">'
            f"{caption}<tr><th></th>{head_row}</tr>{''.join(rows)}</table>")


def hook_summary(model: "HookedTransformer", cache: "ActivationCache", name: str) -> str:
    """One hook in words: its activation's shape on the cached prompt, and the flag that gates it."""
    off = model.hook_flag(name)  # the flag this hook needs, if that flag is off
    if off:
        return f"{name}: gated by cfg.{off}, which is off, so it never fires: call model.set_{off}(True) and run again"
    gate = next((flag for suffix, flag in FLAG_GATED_HOOKS.items() if name.endswith("." + suffix)), None)
    fired = f"shape {tuple(cache[name].shape)} on this prompt" if name in cache else "did not fire on this prompt"
    return f"{name}: {fired}; " + (f"gated by cfg.{gate} (on)" if gate else "no config flag gates it")


class HookExplorer:
    """Pick a layer and head to see its attention pattern; pick a hook to see its shape and flag.

    ``explorer.layer``, ``explorer.head`` and ``explorer.hook`` are the ipywidgets controls (set
    their ``.value`` from code too); ``explorer.pattern`` and ``explorer.hook_info`` are the views.
    """

    def __init__(self, model: "HookedTransformer", prompt: str, cache: "ActivationCache | None" = None):
        w = _ipywidgets()
        if not isinstance(prompt, str):
            raise ConfigError(f"HookExplorer shows one prompt: pass a string, not {type(prompt).__name__}.")
        self.model = model
        self.str_tokens = model.to_str_tokens(prompt)
        self.cache = cache if cache is not None else model.run_with_cache(prompt)[1]
        cfg = model.cfg
        self.layer = w.Dropdown(options=list(range(cfg.n_layers)), value=0, description="layer")
        self.head = w.Dropdown(options=list(range(cfg.n_heads)), value=0, description="head")
        self.pattern = w.HTML()
        self.hook = w.Dropdown(options=list(model.hook_dict), value="blocks.0.attn.hook_pattern", description="hook")
        self.hook_info = w.HTML()
        for control, view in ((self.layer, self._draw_pattern), (self.head, self._draw_pattern), (self.hook, self._describe_hook)):
            control.observe(lambda change, view=view: view(), names="value")
        self.pattern.add_class("lensutil-pattern")
        self.hook_info.add_class("lensutil-hook-info")
        self._draw_pattern()
        self._describe_hook()
        self.widget = w.VBox([w.HTML("<b>Attention pattern</b>"), w.HBox([self.layer, self.head]), self.pattern,
                              w.HTML("<b>Hooks</b>"), self.hook, self.hook_info])
        self.widget.add_class("lensutil-explorer")

    def pattern_for(self, layer: int, head: int) -> str:
        pattern = self.cache[f"blocks.{layer}.attn.hook_pattern"][0, head]  # [query_pos, key_pos]
        return pattern_html(pattern, self.str_tokens, f"layer {layer}, head {head}")

    def _draw_pattern(self) -> None:
        self.pattern.value = self.pattern_for(self.layer.value, self.head.value)

    def _describe_hook(self) -> None:
        self.hook_info.value = f"<code>{html.escape(hook_summary(self.model, self.cache, self.hook.value))}</code>"

    def close(self) -> None:
        """Close every control and view: they stop syncing with the front end and free their comms."""
        for widget in (self.widget, *self.widget.children, self.layer, self.head):
            widget.close()

    def __repr__(self) -> str:  # the text a notebook stores beside the widget: facts only, no figures
        cfg = self.model.cfg
        return (f"HookExplorer({cfg.model_name}: {cfg.n_layers} layers x {cfg.n_heads} heads, "
                f"{len(self.model.hook_dict)} hooks, a prompt of {len(self.str_tokens)} tokens)")

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        # What a page without widgets (the book) shows: the first view, as plain HTML.
        bundle["text/html"] = f"{self.pattern.value}<p>{self.hook_info.value}</p>"
        return bundle
