"""Every user-supplied string is escaped in report.html and report.md."""

from __future__ import annotations

from html.parser import HTMLParser

ATTR = "<script>alert(1)</script>"
GROUPS = ["<img src=x onerror=alert(2)>", "F&M \"quoted\""]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.handlers += [k for k, _ in attrs if k.startswith("on")]


def test_hostile_names_are_escaped(tmp_path, hostile_run):
    from applefair.report import write_reports

    hostile_run(tmp_path, ATTR, GROUPS)
    write_reports(tmp_path)
    html = (tmp_path / "report.html").read_text()
    parser = _Tags()
    parser.feed(html)
    assert "script" not in parser.tags and parser.handlers == []
    assert parser.tags.count("img") == sum(1 for _ in (tmp_path / "plots").iterdir())  # only the plots
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html and "F&amp;M &#34;quoted&#34;" in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#39;quotes&#39;" in html
    md = (tmp_path / "report.md").read_text()
    assert "<script" not in md and "<img src=x" not in md and "&lt;script&gt;" in md
