"""The catalog page: one self-contained HTML file (no network: no CDN scripts, fonts or styles)
listing every marketplace model as a card, with a search box and filters.

The models travel as JSON inside a `<script type="application/json">` element, with `<`, `>`
and `&` escaped, and the page's script builds the cards with `textContent` only: a registry's
text (a description holding `<script>`, say) shows as text and runs nothing.
"""

# The page's CSS, script and HTML are literal text of the output; wrapping them would change it.
# ruff: noqa: E501

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Mapping, Sequence

_SAFE_JSON = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)

_STYLE = """
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; }
body { margin: 0; background: #f5f7fa; }
header { background: #243b53; color: #fff; padding: 16px 24px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; opacity: .8; font-size: 13px; }
.controls { display: flex; gap: 12px; padding: 16px 24px; flex-wrap: wrap; align-items: center; }
.controls input { flex: 1 1 320px; padding: 8px 10px; font-size: 15px; border: 1px solid #bcccdc; border-radius: 6px; }
.controls select { padding: 8px; font-size: 14px; border: 1px solid #bcccdc; border-radius: 6px; }
#count { font-size: 13px; color: #52606d; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 16px; padding: 0 24px 24px; }
.card { background: #fff; border: 1px solid #d9e2ec; border-radius: 8px; padding: 14px 16px; }
.card h2 { font-size: 16px; margin: 0 0 6px; word-break: break-all; }
.badge { display: inline-block; font-size: 11px; padding: 2px 8px; border-radius: 10px; margin-right: 6px; }
.active { background: #e3f9e5; color: #0e5a1c; } .retired { background: #ffe3e3; color: #8a041a; }
.held { background: #fff3c4; color: #5c4813; } p.held { padding: .3em .5em; border-radius: 4px; }
.desc { font-size: 13px; color: #334e68; margin: 8px 0; white-space: pre-wrap; word-break: break-word; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; font-size: 12px; margin: 8px 0; }
dt { color: #627d98; } dd { margin: 0; word-break: break-all; }
.snippet { display: flex; gap: 6px; align-items: center; margin-top: 8px; }
code { background: #f0f4f8; padding: 4px 6px; border-radius: 4px; font-size: 12px; flex: 1; word-break: break-all; }
button { font-size: 12px; padding: 4px 8px; border: 1px solid #bcccdc; background: #fff; border-radius: 4px; cursor: pointer; }
.links a { font-size: 12px; margin-right: 10px; }
.empty { padding: 24px; color: #52606d; }
"""

_SCRIPT = r"""
(function () {
  const models = JSON.parse(document.getElementById("models").textContent);
  const grid = document.querySelector("main");
  const query = document.getElementById("q");
  const workspace = document.getElementById("workspace");
  const status = document.getElementById("status");
  const count = document.getElementById("count");
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const link = (href, text) => {
    const a = el("a", "", text);
    if (/^https?:\/\//i.test(href || "")) { a.href = href; a.target = "_blank"; a.rel = "noopener"; return a; }
    return null;
  };
  for (const name of [...new Set(models.map(m => m.workspace))].sort()) {
    const option = el("option", "", name); option.value = name; workspace.appendChild(option);
  }
  const cards = models.map(m => {
    const card = el("article", "card");
    card.dataset.name = m.marketplace_name;
    card.appendChild(el("h2", "", m.marketplace_name));
    card.appendChild(el("span", "badge " + ({active: "active", held: "held"}[m.status] || "retired"), m.status));
    if (m.held) card.appendChild(el("p", "held", "Held by the promotion gate: " + m.held));
    card.appendChild(el("span", "badge", m.workspace));
    for (const flavor of (m.flavors || "").split(", ").filter(Boolean)) card.appendChild(el("span", "badge", flavor));
    if (m.description) card.appendChild(el("p", "desc", m.description));
    const facts = el("dl");
    const fact = (k, v) => { if (v !== "" && v !== null && v !== undefined) { facts.appendChild(el("dt", "", k)); facts.appendChild(el("dd", "", v)); } };
    fact("source", m.workspace + "/" + m.model_name + " v" + (m.source_version ?? "—"));
    fact("marketplace version", m.marketplace_version);
    fact("owner", m.owner);
    fact("updated", (m.updated_at || "").slice(0, 16).replace("T", " "));
    const metrics = Object.entries(m.metrics || {}).slice(0, 4);
    for (const [k, v] of metrics) fact(k, Number(v).toPrecision(4));
    const inputs = (m.signature && m.signature.inputs) || [];
    const column = c => (c.name ? c.name + ": " : "") + c.type;
    fact("inputs", inputs.length ? inputs.slice(0, 6).map(column).join(", ")
      + (inputs.length > 6 ? " (+" + (inputs.length - 6) + ")" : "") : "not recorded");
    const outputs = (m.signature && m.signature.outputs) || [];
    if (outputs.length) fact("outputs", outputs.map(column).join(", "));
    card.appendChild(facts);
    if (m.load_uri) {
      const snippet = el("div", "snippet");
      const code = el("code", "load", "mlflow.pyfunc.load_model(\"" + m.load_uri + "\")");
      const copy = el("button", "copy", "Copy");
      copy.addEventListener("click", () => {
        const text = code.textContent;
        const done = () => { copy.textContent = "Copied"; setTimeout(() => copy.textContent = "Copy", 2000); };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, done);
        else { const r = document.createRange(); r.selectNodeContents(code); const s = getSelection(); s.removeAllRanges(); s.addRange(r); document.execCommand("copy"); done(); }
      });
      snippet.appendChild(code); snippet.appendChild(copy); card.appendChild(snippet);
    }
    const links = el("div", "links");
    for (const a of [link(m.marketplace_url, "marketplace MLflow page"), link(m.source_url, "source MLflow page")]) if (a) links.appendChild(a);
    card.appendChild(links);
    const tags = Object.entries(m.source_tags || {}).map(([k, v]) => k + " " + v).join(" ");
    card._haystack = [m.marketplace_name, m.model_name, m.description, m.workspace, m.owner, m.flavors, tags, m.held]
      .join("\n").toLowerCase();
    card._workspace = m.workspace; card._status = m.status;
    grid.appendChild(card);
    return card;
  });
  const empty = el("p", "empty", "No model matches."); grid.appendChild(empty);
  function apply() {
    const words = query.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const card of cards) {
      const visible = (!workspace.value || card._workspace === workspace.value)
        && (!status.value || card._status === status.value)
        && words.every(w => card._haystack.includes(w));
      card.hidden = !visible;
      if (visible) shown++;
    }
    empty.hidden = shown > 0;
    count.textContent = shown + " of " + cards.length + " models";
  }
  query.addEventListener("input", apply);
  workspace.addEventListener("change", apply);
  status.addEventListener("change", apply);
  apply();
})();
"""


def render_page(
    models: Sequence[Mapping], *, generated_at: dt.datetime, title: str = "Model marketplace"
) -> str:
    """The whole page for `models` (catalog rows, with `metrics`, `signature` and `source_tags`
    as objects, and `marketplace_url` / `source_url` where known)."""
    data = json.dumps(list(models), sort_keys=True, default=str, ensure_ascii=False).translate(
        _SAFE_JSON
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<header><h1>{html.escape(title)}</h1>
<p>{len(models)} models, generated {generated_at:%Y-%m-%d %H:%M} UTC. Load any of them with the snippet on its card.</p></header>
<div class="controls">
<input id="q" type="search" placeholder="Search name, description, workspace, owner, tags, flavors" autofocus>
<select id="workspace" aria-label="workspace"><option value="">all workspaces</option></select>
<select id="status" aria-label="status"><option value="">any status</option><option value="active">active</option><option value="retired">retired</option><option value="held">held</option></select>
<span id="count"></span>
</div>
<main></main>
<script id="models" type="application/json">{data}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""
