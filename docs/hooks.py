"""mkdocs hooks for the site (mkdocs.yml `hooks:`): keep every page free of assets from outside.

mkdocs-jupyter's notebook template links MathJax and Mermaid from public CDNs on every notebook page;
no notebook here has math or Mermaid diagrams, and a site that is read offline must not wait on them.
"""
import re

_CDN_SCRIPT = re.compile(r'<script[^>]*\bsrc="https?://[^"]*(?:mathjax|mermaid)[^"]*"[^>]*>\s*</script>', re.I)
_CDN_MERMAID = re.compile(r'<script type="module">\s*import mermaid from "https?://[^"]*";.*?</script>', re.I | re.S)


def on_post_page(output, page, config):
    return _CDN_MERMAID.sub('', _CDN_SCRIPT.sub('', output))


_HEADING_ID = re.compile(r'<h[1-6][^>]*\bid="([^"]+)"')


def _flat(items):
    for item in items:
        yield item
        yield from _flat(item.children)


def on_page_content(html, page, config, files):
    """Point the table of contents at the headings' real ids.

    mkdocs-jupyter slugs a notebook's headings twice, and differently: the page's `<h2 id=...>` keeps the
    words in `code` (`An `arch` for ...` -> `an-arch-for-vision_learner`), the table of contents drops
    them (`an-for`), so those entries led nowhere. The entries and the headings come in the same order:
    an entry whose id is not on the page takes the next heading's."""
    ids = _HEADING_ID.findall(html)
    if not ids or not page.toc: return html
    known, i = set(ids), 0
    for item in _flat(page.toc.items):
        if item.id in known: i = ids.index(item.id) + 1
        elif i < len(ids): item.id, i = ids[i], i + 1
    return html
