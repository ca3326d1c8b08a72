"""The documentation site (`make docs`, docs/build.py): built offline from the notebooks, one page per
notebook where nbdev's links expect it, no link to a page that is not there, nothing fetched from outside.

The whole site is built once without running the notebooks (their committed form has no outputs;
tests/test_kernel_run.py runs them); a second, tiny site runs a notebook that draws a plot, as
`make docs` (`--execute`) does, and its page must show the picture."""
import ast, html, re, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'docs'))
import build as docs   # noqa: E402


class _Links(HTMLParser):
    "The ids, links (a/link href) and assets (script/img/link src or stylesheet href) of one HTML page"
    def __init__(self):
        super().__init__(); self.ids, self.links, self.assets = set(), [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('name'): self.ids.add(a['name'])
        if tag in ('script', 'img', 'iframe') and a.get('src'): self.assets.append(a['src'])
        if tag == 'link' and a.get('href'): (self.assets if a.get('rel') in ('stylesheet', 'preload', 'icon') else self.links).append(a['href'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])


def parse(page:Path) -> _Links:
    p = _Links(); p.feed(page.read_text(encoding='utf-8')); return p


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('docs')
    return docs.build(site=tmp/'site', work=tmp/'work')


@pytest.fixture(scope='module')
def pages(site):
    return {p.relative_to(site).as_posix(): parse(p) for p in site.rglob('*.html')}


def test_every_notebook_has_a_page(site):
    nbs = docs.notebooks()
    names = [docs.page_name(nb) for nb in nbs]
    assert len(set(names)) == len(nbs), 'two notebooks would share a page'
    for nb, name in zip(nbs, names):
        assert (site/name).is_file(), f'{nb.name}: no page {name}'
        assert (site/f'{name}.md').is_file(), f'{nb.name}: no Markdown page {name}.md'
    assert (site/'index.html').is_file() and 'bear_classifier' in (site/'index.html').read_text()


def test_pages_show_prose_and_code(site):
    "A module's page has the notebook's prose and its code (nbdev's `#|` lines removed), its Markdown twin too"
    nb = nbformat.read(ROOT/'nbs'/'08_clean.ipynb', as_version=4)
    first_def = next(n for c in nb.cells if c.cell_type == 'code' and c.source.startswith('#| export')
                     for n in docs.defined_names(docs.directives(c.source)[1]) if '.' not in n)
    text = html.unescape(re.sub(r'<[^>]+>', '', (site/'clean.html').read_text()))
    assert docs.title(nb, Path('08_clean.ipynb')) in text                       # the title, and the prose under it
    assert re.search(rf'(def|class) {first_def}\b', text), first_def             # the code
    assert '#| export' not in text and 'default_exp' not in text                # nbdev's directives are not shown
    md = (site/'clean.html.md').read_text()
    assert md.startswith('# ') and '```python\n' in md


def test_module_docs_links_point_into_the_site(site):
    "The `Docs:` line nbdev writes into each module names a page of this site (at pyproject's Documentation URL)"
    base, seen = docs.site_url(), 0
    for py in sorted((ROOT/'bear_classifier').glob('[!_]*.py')):
        doc = ast.get_docstring(ast.parse(py.read_text())) or ''
        m = re.search(r'^Docs: (\S+)$', doc, re.M)
        assert m, f'{py.name}: no Docs: line in the module docstring (nbdev-export writes it)'
        url = m[1]
        assert url.startswith(base), f'{py.name}: {url} is not under the site address {base}'
        assert (site/url[len(base):]).is_file(), f'{py.name}: {url} is not a page of the site'
        seen += 1
    assert seen >= 10


def test_symbol_links_have_anchors(site, pages):
    "Every `page.html#anchor` of nbdev's symbol index (_modidx.py) lands on an anchor of that page"
    from bear_classifier._modidx import d
    missing = []
    for mod, syms in d['syms'].items():
        for sym, (link, _) in syms.items():
            page, anchor = link.split('#', 1)
            if page not in pages: missing.append(f'{sym}: no page {page}')
            elif anchor not in pages[page].ids: missing.append(f'{sym}: no #{anchor} in {page}')
    assert not missing, f'{len(missing)} symbol links go nowhere: {missing[:10]}'


def test_no_page_links_to_a_missing_one(site, pages):
    broken = []
    for name, p in pages.items():
        for href in p.links + p.assets:
            u = urlparse(href)
            if u.scheme or href.startswith(('//', 'mailto:', 'data:')): continue
            path, frag = urldefrag(href)
            if not path:
                if frag and frag not in p.ids: broken.append(f'{name}: #{frag}')
                continue
            base = urlparse(docs.site_url()).path                      # 404.html links from the site's root
            target = site/path[len(base):] if path.startswith(base) else (site/name).parent/path
            target = target/'index.html' if target.is_dir() else target
            if not target.exists(): broken.append(f'{name}: {href}')
            elif frag and target.suffix == '.html' and frag not in pages[target.resolve().relative_to(site.resolve()).as_posix()].ids:
                broken.append(f'{name}: {href} (no such anchor)')
    assert not broken, broken[:20]


def test_nothing_from_outside(pages):
    "Read offline, no page waits on a CDN: every script, stylesheet and image is in the site"
    outside = {f'{n}: {a}' for n, p in pages.items() for a in p.assets if urlparse(a).scheme in ('http', 'https') or a.startswith('//')}
    assert not outside, sorted(outside)[:10]


def test_executed_page_shows_its_plot(tmp_path):
    "`make docs` runs the notebooks (docs/nbrun.py) and the page shows what they drew; `#| slow` cells stay unrun"
    nbs = tmp_path/'nbs'; nbs.mkdir()
    nb = nbformat.v4.new_notebook(metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})
    nb.cells = [nbformat.v4.new_markdown_cell('# Plots\n\n> A page with a picture.'),
                nbformat.v4.new_code_cell('import matplotlib.pyplot as plt\n'
                                          'fig, ax = plt.subplots(figsize=(2, 2)); ax.plot([0, 1], [1, 0]); plt.show()'),
                nbformat.v4.new_code_cell('#| slow\nprint("slow" + " cell ran")'),
                nbformat.v4.new_code_cell('print("printed " + "text")')]
    for name in ('index.ipynb', '01_plots.ipynb'): nbformat.write(nb, nbs/name)
    site = docs.build(docs.notebooks(nbs), site=tmp_path/'site', work=tmp_path/'work', execute=True)
    html = (site/'plots.html').read_text()
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html), 'no plot on the page'
    assert 'printed text' in html and 'slow cell ran' not in html
    assert 'printed text' in (site/'plots.html.md').read_text()
