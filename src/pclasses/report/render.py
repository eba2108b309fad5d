"""One self-contained HTML page from a report's :meth:`~ReportData.to_dict`.

The page is rendered from the very document ``--json`` prints, so the two
never disagree.  Styles, the script (sorting and filtering the classes
table) and the drawing are inline; a Content-Security-Policy forbids every
network request, so the file opens from disk anywhere and fetches nothing.
Every text from the data goes through :func:`pclasses.report.text.h`; the
script reads only the page's own cells, never data embedded as code.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .. import __version__
from .collect import LIMITS
from .svg import draw
from .text import h

__all__ = ["render"]

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'")

_CSS = """
:root{--ok:#2e7d32;--bad:#c62828;--warn:#ef6c00;--muted:#666;--line:#ddd;--bar:#5c7cfa}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#263238;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header .target{font-family:ui-monospace,Menlo,Consolas,monospace;opacity:.85;word-break:break-all}
main{max-width:1240px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:16px 0;
padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px}
.verdict{font-size:16px;font-weight:600;padding:8px 12px;border-radius:6px;margin:0 0 12px}
.verdict.ok{background:#e8f5e9;color:var(--ok)}
.verdict.bad{background:#ffebee;color:var(--bad)}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:0;padding:0}
.figures div{border:1px solid var(--line);border-radius:6px;padding:6px 12px;min-width:130px}
.figures dt{color:var(--muted);font-size:12px}
.figures dd{margin:0;font-size:20px;font-weight:600}
.figures .bad dd{color:var(--bad)}
.names{margin:10px 0 0}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
th.sortable{cursor:pointer;user-select:none}
th.sortable::after{content:" \\2195";color:#aaa}
th[aria-sort=ascending]::after{content:" \\2191";color:#333}
th[aria-sort=descending]::after{content:" \\2193";color:#333}
td.num{text-align:right;white-space:nowrap}
td.name{word-break:break-all}
.barcell{min-width:140px}
.bar{display:inline-block;height:8px;background:var(--bar);border-radius:2px;margin-right:6px;
vertical-align:middle}
.status{font-weight:600;white-space:nowrap}
tr.s-ok .status{color:var(--ok)}
tr.s-aliased .status{color:#1565c0}
tr.s-database-resident .status{color:#6a1b9a}
tr.s-not-imported .status{color:var(--warn)}
tr.s-broken{background:#fff5f5}
tr.s-broken .status{color:var(--bad)}
#filter{width:340px;max-width:100%;padding:6px 8px;border:1px solid #bbb;border-radius:4px;
font-size:14px}
.tools{display:flex;gap:16px;align-items:center;margin-bottom:8px}
.muted{color:var(--muted)}
details.broken-class{border:1px solid #f1c6c6;border-radius:6px;margin:8px 0;background:#fffafa}
details.broken-class>summary{cursor:pointer;padding:6px 10px;font-weight:600}
details.broken-class .body{padding:4px 14px 10px}
ul.examples{margin:4px 0;padding-left:18px}
ul.examples li{margin:3px 0;word-break:break-all}
.path{color:#0d47a1}
#db-drawing{max-height:640px;background:#fcfcfc;border:1px solid #eee;border-radius:6px}
#db-drawing .node rect{fill:#e3f2fd;stroke:#1565c0;stroke-width:1.5}
#db-drawing .node.missing rect{fill:#ffebee;stroke:var(--bad);stroke-dasharray:6 4}
#db-drawing text{text-anchor:middle;font:13px system-ui,sans-serif}
#db-drawing .name{font-weight:600}
#db-drawing .sub{fill:var(--muted);font-size:12px}
#db-drawing .edge path{fill:none;stroke:#555;stroke-width:1.6}
#db-drawing .edge.dangling path{stroke:var(--bad);stroke-dasharray:7 5}
#db-drawing .edge text{fill:#333;font-size:12px;paint-order:stroke;stroke:#fff;stroke-width:4}
#db-drawing .edge.dangling text{fill:var(--bad)}
#db-drawing .badge circle{fill:var(--bad)}
#db-drawing .badge text{fill:#fff;font-size:11px;font-weight:700}
.repair{margin:8px 0}
.repair pre{background:#263238;color:#e0f2f1;padding:8px 10px;border-radius:4px;margin:2px 0;
white-space:pre-wrap;word-break:break-all}
footer{color:var(--muted);font-size:12px;text-align:center;margin:20px}
"""

_JS = """
(function(){
  "use strict";
  var table=document.getElementById("classes-table");
  if(!table){return;}
  var body=table.tBodies[0];
  var rows=Array.prototype.slice.call(body.rows);
  var input=document.getElementById("filter");
  var shown=document.getElementById("shown");
  function apply(){
    var q=input.value.trim().toLowerCase();
    var n=0;
    rows.forEach(function(r){
      var hit=!q||r.getAttribute("data-name").toLowerCase().indexOf(q)>=0
        ||r.getAttribute("data-status").indexOf(q)===0;
      r.hidden=!hit;
      if(hit){n++;}
    });
    shown.textContent=n+" of "+rows.length+" classes shown";
  }
  input.addEventListener("input",apply);
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,col){
    if(!th.classList.contains("sortable")){return;}
    th.addEventListener("click",function(){
      var desc=th.getAttribute("aria-sort")!=="descending";
      Array.prototype.forEach.call(heads,function(o){o.removeAttribute("aria-sort");});
      th.setAttribute("aria-sort",desc?"descending":"ascending");
      var numeric=th.getAttribute("data-type")==="number";
      rows.sort(function(a,b){
        var x=a.cells[col].getAttribute("data-sort"),y=b.cells[col].getAttribute("data-sort");
        var c=numeric?(parseFloat(x)-parseFloat(y)):(x<y?-1:x>y?1:0);
        return desc?-c:c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  apply();
})();
"""

_STATUS_ORDER = {"broken": 0, "not-imported": 1, "aliased": 2, "database-resident": 3, "ok": 4}


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def render(data: dict[str, Any], *, generated: datetime | None = None) -> str:
    """The page of ``data`` (a :meth:`ReportData.to_dict` document)."""
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pclasses report: {h(data['target'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header><h1>pclasses report</h1><div class="target">{h(data["target"])}</div>'
        "</header><main>",
        _summary(data),
        _classes(data),
        _broken(data),
        _drawing(data),
        _refs(data),
        _repairs(data),
        _unreadable(data),
        f"</main><footer>pclasses {h(__version__)}, {h(when)}. Every record was read "
        "with the record engine: nothing stored in the database was run.</footer>",
        f"<script>{_JS}</script></body></html>\n",
    ]
    return "".join(parts)


def _summary(data: dict[str, Any]) -> str:
    s = data["summary"]
    figures = [
        ("databases", s["databases"], False),
        ("records", s["records"], False),
        ("classes", s["classes"], False),
        ("broken classes", s["broken_classes"], s["broken_classes"] > 0),
        ("dangling references", s["dangling_references"], s["dangling_references"] > 0),
        ("unreadable records", s["unreadable_records"], s["unreadable_records"] > 0),
    ]
    if s["refs_problems"]:
        figures.append(("intrinsic-reference problems", s["refs_problems"], True))
    cells = "".join(
        f'<div class="{"bad" if bad else ""}" data-figure="{h(label)}"><dt>{h(label)}</dt>'
        f"<dd>{value}</dd></div>"
        for label, value, bad in figures)
    names = s["broken_class_names"]
    listing = ""
    if names:
        shown = names[: LIMITS["broken_names"]]
        more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        listing = ('<p class="names">Broken classes: '
                   + ", ".join(f'<code class="broken-name">{h(n)}</code>' for n in shown)
                   + f"{h(more)}</p>")
    error = data.get("refs_check_error")
    note = (f'<p class="muted">The reference check could not run completely: {h(error)}</p>'
            if error else "")
    cls = "ok" if s["healthy"] else "bad"
    return (f'<section id="summary"><h2>Summary</h2>'
            f'<p class="verdict {cls}" id="verdict">{h(s["verdict"])}</p>'
            f'<dl class="figures">{cells}</dl>'
            f'<p id="summary-text">{_plural(s["records"], "record")} in '
            f'{_plural(s["databases"], "database")}; {_plural(s["classes"], "class", "classes")}'
            f', {_plural(s["broken_classes"], "broken class", "broken classes")}, '
            f'{_plural(s["dangling_references"], "dangling reference")}.</p>'
            f"{listing}{note}</section>")


def _bar(value: int, top: int) -> str:
    width = 0.0 if not top else max(0.5, 100.0 * value / top) if value else 0.0
    return (f'<td class="num barcell" data-sort="{value}"><span class="bar" '
            f'style="width:{width * 0.6:.1f}%"></span>{value:,}</td>')


def _classes(data: dict[str, Any]) -> str:
    rows = []
    multi = len(data["databases"]) > 1
    all_classes = [(d["name"], c) for d in data["databases"] for c in d["classes"]]
    top_records = max((c["records"] for _, c in all_classes), default=0)
    top_mentions = max((c["mentions"] for _, c in all_classes), default=0)
    all_classes.sort(key=lambda x: (_STATUS_ORDER.get(x[1]["status"], 9), -x[1]["records"],
                                    x[1]["module"], x[1]["name"]))
    for db_name, c in all_classes:
        dotted = f"{c['module']}.{c['name']}"
        status = c["status"]
        detail = ""
        if status == "aliased" and len(c["chain"]) > 1:
            detail = "\u2192 " + " \u2192 ".join(c["chain"][1:])
        elif status == "broken" and c["error"]:
            detail = c["error"]
        elif status == "not-imported" and c["location"]:
            detail = f"found at {c['location']}; not trusted, not run"
        db_cell = f'<td data-sort="{h(db_name)}">{h(db_name)}</td>' if multi else ""
        rows.append(
            f'<tr class="s-{h(status)}" data-name="{h(dotted)}" data-status="{h(status)}">'
            f'<td class="name mono" data-sort="{h(dotted)}">{h(dotted)}</td>{db_cell}'
            f"{_bar(c['records'], top_records)}{_bar(c['mentions'], top_mentions)}"
            f'<td class="status" data-sort="{_STATUS_ORDER.get(status, 9)}">{h(status)}</td>'
            f'<td class="detail" data-sort="{h(detail)}">{h(detail)}</td></tr>')
    db_head = '<th class="sortable" data-type="text">database</th>' if multi else ""
    capped = [d for d in data["databases"] if d["classes_total"] > len(d["classes"])]
    note = "".join(
        f'<p class="muted">{h(d["name"])}: the first {len(d["classes"]):,} of '
        f'{d["classes_total"]:,} classes are shown (see --json).</p>' for d in capped)
    return (
        '<section id="classes"><h2>Classes</h2><div class="tools">'
        '<label>Filter <input id="filter" type="search" autocomplete="off" '
        'placeholder="type part of a class name or a status"></label>'
        f'<span id="shown" class="muted">{len(rows)} of {len(rows)} classes shown</span></div>'
        '<table id="classes-table"><thead><tr>'
        '<th class="sortable" data-type="text">class</th>'
        f'{db_head}<th class="sortable" data-type="number">records</th>'
        '<th class="sortable" data-type="number">mentions</th>'
        '<th class="sortable" data-type="number">status</th><th>detail</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{note}</section>")


def _broken(data: dict[str, Any]) -> str:
    items = []
    for d in data["databases"]:
        for b in d["broken_classes"]:
            dotted = f"{b['module']}.{b['name']}"
            examples = []
            for e in b["examples"]:
                if e["path"]:
                    where = f'<span class="path mono">{h(e["path"])}</span>'
                else:
                    refs = ", ".join(e["referrers"]) or "nothing"
                    where = (f'<span class="muted">no path from the root; referred to by '
                             f"{h(refs)}</span>")
                examples.append(f'<li><code>{h(e["oid"])}</code> {where}</li>')
            body = "".join(examples) or '<li class="muted">no example kept</li>'
            where_db = f" in {h(d['name'])}" if len(data["databases"]) > 1 else ""
            items.append(
                f'<details class="broken-class" data-name="{h(dotted)}"><summary>'
                f'<code>{h(dotted)}</code>{where_db}: {_plural(b["records"], "record")}, '
                f'named by {b["mentions"]:,} more</summary><div class="body">'
                f'<p class="muted">{h(b["error"] or "does not resolve")}</p>'
                f'<ul class="examples">{body}</ul></div></details>')
        if d["broken_classes_total"] > len(d["broken_classes"]):
            items.append(f'<p class="muted">{h(d["name"])}: the first '
                         f'{len(d["broken_classes"])} of {d["broken_classes_total"]} broken '
                         "classes are shown.</p>")
    content = "".join(items) or '<p class="muted">No broken classes.</p>'
    return (f'<section id="broken"><h2>Broken classes</h2>'
            '<p class="muted">Open a class to see example objects and their paths from '
            f"the root.</p>{content}</section>")


def _drawing(data: dict[str, Any]) -> str:
    nodes = [(d["name"], d["records"]) for d in data["databases"]]
    links = [(x["source"], x["target"], x["count"], x["dangling"], x["missing_target"])
             for x in data["links"]]
    svg = draw(nodes, links)
    rows = "".join(
        f'<tr class="{"s-broken" if x["dangling"] else ""}"><td>{h(x["source"])}</td>'
        f'<td>{h(x["target"])}</td><td class="num">{x["count"]:,}</td>'
        f'<td class="num">{x["dangling"]:,}</td></tr>' for x in data["links"])
    table = ('<table id="links-table"><thead><tr><th>from</th><th>to</th><th>references</th>'
             f"<th>dangling</th></tr></thead><tbody>{rows}</tbody></table>" if rows else
             '<p class="muted">No references between databases, and none dangles.</p>')
    check = data.get("refs_check") or {}
    dangling = check.get("dangling", [])
    listing = ""
    if dangling:
        lis = "".join(
            f'<li><code>{h(d["source_database"])}:{h(d["source_oid"])}</code> \u2192 '
            f'<code>{h(d["target_database"])}:{h(d["target_oid"])}</code> '
            f'({h(d["form"])}, {h(d["reason"])})</li>' for d in dangling)
        more = check["dangling_total"] - len(dangling)
        extra = f'<p class="muted">and {more:,} more</p>' if more > 0 else ""
        total = _plural(check["dangling_total"], "dangling reference")
        listing = (f'<details id="dangling"><summary>{total}</summary>'
                   f'<ul class="examples">{lis}</ul>{extra}</details>')
    unavailable = "".join(
        f'<p class="muted">{h(n)} is unavailable: {h(why)}</p>'
        for n, why in sorted((check.get("unavailable") or {}).items()))
    return (f'<section id="databases"><h2>Databases and references</h2>{svg}{table}'
            f"{listing}{unavailable}</section>")


def _refs(data: dict[str, Any]) -> str:
    if not data["refs"]:
        return ""
    rows = "".join(
        f'<tr><td>{h(r["database"])}</td><td class="mono">{h(r["ref_id"])}</td>'
        f'<td>{h(r["mode"])}</td><td class="num">{r["links"]:,}</td>'
        f'<td class="num">{r["targets"]:,}</td><td class="num">{r["dangling"]:,}</td></tr>'
        for r in data["refs"])
    verify = data.get("refs_verify") or {}
    problems = "".join(
        f'<li>{h(p["kind"])}: <code>{h(p["oid_repr"])}</code> in {h(p["database"])} '
        f'{h(p["ref_id"])} \u2192 {h(p["key"])}</li>' for p in verify.get("problems", []))
    listing = (f'<ul class="examples">{problems}</ul>' if problems
               else '<p class="muted">The registries agree with the records.</p>')
    return ('<section id="refs"><h2>Intrinsic references</h2><table><thead><tr>'
            "<th>database</th><th>reference</th><th>mode</th><th>links</th><th>targets</th>"
            f"<th>dangling</th></tr></thead><tbody>{rows}</tbody></table>{listing}</section>")


def _repairs(data: dict[str, Any]) -> str:
    items = "".join(
        f'<div class="repair"><div>{h(s["reason"])}</div><pre><code>{h(s["command"])}'
        "</code></pre></div>" for s in data["suggestions"])
    content = items or '<p class="muted">Nothing to repair.</p>'
    return f'<section id="repairs"><h2>Suggested commands</h2>{content}</section>'


def _unreadable(data: dict[str, Any]) -> str:
    items = []
    for d in data["databases"]:
        for u in d["unreadable"]:
            items.append(f'<li><code>{h(u["oid"])}</code> in {h(d["name"])}: '
                         f'{h(u["reason"])}</li>')
        if d["unreadable_total"] > len(d["unreadable"]):
            items.append(f'<li class="muted">and {d["unreadable_total"] - len(d["unreadable"])}'
                         " more</li>")
    if not items:
        return ""
    return (f'<section id="unreadable"><h2>Unreadable records</h2>'
            f'<ul class="examples">{"".join(items)}</ul></section>')
