"""Renderers of the section list: one self-contained HTML page, and markdown.

The HTML uses a Jinja2 environment with autoescape on, so every string that comes from
the user (attribute and group names, ids, config values, file names) is HTML-escaped.
Plots are data URIs; there is no script and nothing is fetched from the network.
"""

from __future__ import annotations

import re

from jinja2 import Environment

from applefair.report.document import Figure, Paragraph, Section, Table

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd;
       padding-bottom: 0.2rem; margin-top: 2rem; }
.meta { color: #666; font-size: 0.9rem; }
nav ul { columns: 2; font-size: 0.92rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; vertical-align: top; }
th { background: #f4f4f4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: top; text-align: left; color: #444; font-size: 0.88rem; padding-bottom: 0.3rem; }
figure { margin: 0.8rem 0 1.2rem; } figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.88rem; }
.summary { background: #f3f7fb; border-left: 4px solid #4477aa; padding: 0.6rem 0.9rem 0.6rem 2rem; }
.summary li { margin: 0.25rem 0; }
.note { color: #555; font-size: 0.9rem; font-style: italic; }
code { background: #f4f4f4; padding: 0 0.2rem; word-break: break-all; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
<nav><ul>{% for s in sections %}<li><a href="#{{ s.id }}">{{ s.title }}</a></li>{% endfor %}</ul></nav>
{% for s in sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
{% for b in s.blocks %}
{% if b.kind == "paragraph" %}
<p class="{{ b.css }}">{{ b.text }}</p>
{% elif b.kind == "list" %}
<ul class="summary">{% for item in b.entries %}<li>{{ item }}</li>{% endfor %}</ul>
{% elif b.kind == "table" %}
<div class="scroll"><table>
{% if b.caption %}<caption>{{ b.caption }}</caption>{% endif %}
<thead><tr>{% for h in b.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in b.rows %}<tr>{% for c in row %}<td{% if c.num %} class="num"{% endif %}>{{ c.text }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
{% elif b.kind == "figure" %}
<figure><img src="{{ b.src }}" alt="{{ b.alt }}"><figcaption>{{ b.caption }}</figcaption></figure>
{% endif %}
{% endfor %}
</section>
{% endfor %}
</body>
</html>
"""

_NUM = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?( \[.*\])?$|^$|^-?inf$")


def _blocks(section: Section) -> list[dict]:
    out = []
    for b in section.blocks:
        if isinstance(b, Paragraph) and b.kind == "summary":
            if not out or out[-1]["kind"] != "list":
                out.append({"kind": "list", "entries": []})
            out[-1]["entries"].append(b.text)
        elif isinstance(b, Paragraph):
            out.append({"kind": "paragraph", "text": b.text, "css": b.kind})
        elif isinstance(b, Table):
            header, rows = b.cells()
            numeric = [bool(rows) and all(_NUM.match(r[i]) for r in rows) for i in range(len(header))]
            out.append({"kind": "table", "caption": b.caption, "header": header,
                        "rows": [[{"text": c, "num": numeric[i]} for i, c in enumerate(r)] for r in rows]})
        elif isinstance(b, Figure):
            out.append({"kind": "figure", "src": b.data_uri, "alt": b.alt or b.caption, "caption": b.caption})
    return out


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole report as one HTML string (autoescaped)."""
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(_TEMPLATE)
    return template.render(title=title, subtitle=subtitle,
                           sections=[{"id": s.id, "title": s.title, "blocks": _blocks(s)} for s in sections])


def md_escape(text: str) -> str:
    """Escape text for a markdown table cell or paragraph: no raw HTML, no broken tables."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def render_markdown(title: str, subtitle: str, sections: list[Section]) -> str:
    """The same sections as markdown; figures link to the files under plots/."""
    lines = [f"# {md_escape(title)}", "", f"_{md_escape(subtitle)}_", ""]
    for s in sections:
        lines += [f"## {md_escape(s.title)}", ""]
        for b in s.blocks:
            if isinstance(b, Paragraph):
                text = md_escape(b.text)
                lines += [f"- {text}" if b.kind == "summary" else (f"_{text}_" if b.kind == "note" else text), ""]
            elif isinstance(b, Table):
                header, rows = b.cells()
                if b.caption:
                    lines += [md_escape(b.caption), ""]
                lines.append("| " + " | ".join(md_escape(h) for h in header) + " |")
                lines.append("|" + "|".join("---:" if rows and all(_NUM.match(r[i]) for r in rows) else "---"
                                            for i in range(len(header))) + "|")
                lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
                lines.append("")
            elif isinstance(b, Figure):
                lines += [f"![{md_escape(b.alt or b.name)}](plots/{b.name}{b.suffix})", "", md_escape(b.caption), ""]
    return "\n".join(lines).rstrip() + "\n"
