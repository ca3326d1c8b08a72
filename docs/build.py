"""Build the documentation site from the notebooks, offline: `make docs` -> _docs/index.html.

nbdev's own site needs Quarto, which cannot be installed here (its pip package downloads a binary
while installing), so the site is mkdocs-material + mkdocs-jupyter (mkdocs.yml), laid out as nbdev
lays out its pages, so that the `Docs:` line nbdev writes into every module, and the symbol links
of `_modidx.py`, point into it:

* `nbs/00_files.ipynb` -> `files.html` (nbdev's `nbpath2html`: the number prefix goes), with an
  anchor per exported name (`files.html#settings.from_env`), and `files.html.md`, the page as
  Markdown (the `.html.md` address of the modules' `Docs:` lines); `index.ipynb` is the home page;
  the Voilà page `app.ipynb` would collide with `14_app` and becomes `page.html`;
* a page shows what nbdev's pages show: prose, code (cells flagged `#| hide` left out, the `#|`
  directive lines removed) and outputs. The notebooks are committed without outputs, so
  `--execute` (what `make docs` passes) first runs each one in a kernel (docs/nbrun.py: the cells
  the test suite runs, offline) and the page gets those outputs: tables, printed text, plots;
* a notebook named in backticks in the prose (`08_clean`, `nbs/14_app.ipynb`) becomes a link to
  its page.

Notebooks are staged into `_proc/docs/` and the site is written to `_docs/` (both git-ignored;
`_docs` is nbdev's `doc_path`). The site's address is pyproject's `[project.urls] Documentation`.
"""
from __future__ import annotations
import argparse, ast, logging, re, shutil, sys, time
from pathlib import Path

import nbformat
from nbdev.config import get_config, nbpath2html

ROOT = Path(__file__).resolve().parents[1]
STAGE, MARKDOWN, SITE = ROOT/'_proc'/'docs', ROOT/'_proc'/'docs-md', ROOT/'_docs'
PAGE_NAMES = {'app.ipynb': 'page.html'}          # the Voilà page; 14_app.ipynb is app.html
_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')
_EXPORT = {'export', 'exports', 'exporti'}


def notebooks(nbs=None) -> list[Path]:
    "The notebooks of the site, in the order of the lesson (nbs/*.ipynb by name; the index first)"
    nbs = sorted(Path(nbs or ROOT/'nbs').glob('*.ipynb'))
    return sorted(nbs, key=lambda p: (p.name != 'index.ipynb', p.name))


def page_name(nb) -> str:
    "The page of notebook `nb` in the site, as nbdev names it: `00_files.ipynb` -> `files.html`"
    return PAGE_NAMES.get(Path(nb).name) or nbpath2html(Path(nb).name).as_posix()


def directives(src:str) -> tuple[dict, str]:
    "The `#| key: value` lines at the top of a code cell, and the source without them"
    lines, found = src.splitlines(), {}
    while lines and (m := _DIRECTIVE.match(lines[0])):
        found[m[1]] = m[2]
        lines.pop(0)
    return found, '\n'.join(lines).strip('\n')


def _patched(fn) -> list[str]:
    "`Cls.name` for a function decorated with fastcore's `@patch` (the class is the first argument's annotation)"
    decs = [d.func if isinstance(d, ast.Call) else d for d in fn.decorator_list]
    if not any(getattr(d, 'id', None) == 'patch' for d in decs) or not fn.args.args: return []
    ann = fn.args.args[0].annotation
    classes = ann.elts if isinstance(ann, ast.Tuple) else [ann] if ann is not None else []
    return [f'{c.id}.{fn.name}' for c in classes if isinstance(c, ast.Name)]


def defined_names(src:str) -> list[str]:
    "The names an exported cell defines, as nbdev's doc links spell them: `f`, `Cls`, `Cls.meth`"
    try: tree = ast.parse(src)
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)): out += _patched(node) or [node.name]
        elif isinstance(node, ast.ClassDef):
            out.append(node.name)
            out += [f'{node.name}.{f.name}' for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return out


def _link_notebooks(md:str, pages:dict) -> str:
    "Backticked notebook names in `md` (outside code blocks) as links to their pages"
    def link(m):
        stem = Path(m[2]).stem
        return f'[`{m[1]}{m[2]}`]({pages[stem]})' if stem in pages else m[0]
    parts = re.split(r'(```.*?```)', md, flags=re.S)
    return ''.join(p if p.startswith('```') else re.sub(r'(?<!\[)`((?:nbs/)?)([\w.-]+?)(?:\.ipynb)?`', link, p) for p in parts)


def _anchor_cell(names) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(''.join(f'<a id="{n.lower()}"></a>' for n in names))


def page_cells(nb, pages:dict, outputs:dict|None=None) -> list:
    "The cells of `nb` as its page shows them; `outputs`: cell id -> outputs of an executed copy"
    cells = []
    for c in nb.cells:
        if c.cell_type == 'markdown': cells.append(nbformat.v4.new_markdown_cell(_link_notebooks(c.source, pages))); continue
        if c.cell_type != 'code': continue
        d, src = directives(c.source)
        if 'hide' in d or d.get('include') == 'false': continue
        outs = (outputs or {}).get(c.get('id'), c.get('outputs', []))
        if d.get('output') == 'false': outs = []
        if not src and not outs: continue                          # `#| default_exp ...` and the like
        if _EXPORT & d.keys() and (names := defined_names(src)): cells.append(_anchor_cell(names))
        cell = nbformat.v4.new_code_cell('' if d.get('echo') == 'false' else src)
        cell.outputs = outs
        cells.append(cell)
    return cells


def _text(out) -> str:
    if out.get('output_type') == 'stream': return out.get('text', '')
    data = out.get('data', {})
    return data.get('text/markdown') or data.get('text/plain') or ''


def page_markdown(nb) -> str:
    "The page as Markdown (`<page>.html.md`): the prose, the code in fences, the text of the outputs"
    parts = []
    for c in nb.cells:
        if c.cell_type == 'markdown': parts.append(c.source)
        elif c.source or c.outputs:
            if c.source: parts.append(f'```python\n{c.source}\n```')
            text = ''.join(_text(o) for o in c.outputs).strip('\n')
            if text: parts.append(f'```\n{text}\n```')
    return '\n\n'.join(parts) + '\n'


def title(nb, path:Path) -> str:
    "The page's title: the notebook's `# Title`, else its file name"
    for c in nb.cells:
        if c.cell_type == 'markdown' and (m := re.match(r'#\s+(.+)', c.source.strip())): return m[1].strip()
    return path.stem


def executed_outputs(path:Path) -> dict:
    "cell id -> outputs, from running notebook `path` in a kernel (docs/nbrun.py)"
    sys.path.insert(0, str(Path(__file__).parent))
    from nbrun import run_in_kernel
    nb, secs = run_in_kernel(path)
    print(f'docs: ran {path.name} in a kernel ({secs:.0f}s)', flush=True)
    return {c.get('id'): c.outputs for c in nb.cells if c.cell_type == 'code'}


def stage(nbs, dest:Path=STAGE, execute:bool=False, md:Path=MARKDOWN) -> list[dict]:
    "Write each notebook's page into `dest` as `<page>.ipynb` (and `<page>.html.md` into `md`); the nav entries, in order"
    for d in dest, md: shutil.rmtree(d, ignore_errors=True); d.mkdir(parents=True)
    pages = {Path(p).stem: page_name(p) for p in nbs}
    pages.update({Path(p).name: page_name(p) for p in nbs})
    nav = []
    for path in nbs:
        nb = nbformat.read(path, as_version=4)
        nb.cells = page_cells(nb, pages, executed_outputs(path) if execute else None)
        name = page_name(path)
        nb.metadata = {'kernelspec': nb.metadata.get('kernelspec', {}), 'language_info': {'name': 'python'}}
        nbformat.write(nb, dest/Path(name).with_suffix('.ipynb'))
        (md/f'{name}.md').write_text(page_markdown(nb), encoding='utf-8')
        nav.append({'Overview' if path.name == 'index.ipynb' else title(nb, path): Path(name).with_suffix('.ipynb').as_posix()})
    return nav


def site_url() -> str:
    "Where the site is published: pyproject's `[project.urls] Documentation` (nbdev's doc_host + doc_baseurl)"
    cfg = get_config(ROOT)
    return f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl.rstrip('/')}/"


def build(nbs=None, site:Path=SITE, execute:bool=False, work:Path|None=None, strict:bool=True) -> Path:
    "Stage the notebooks (in `work`, default `_proc/`) and build the site into `site`; its folder"
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    nbs = notebooks() if nbs is None else [Path(p) for p in nbs]
    docs, md = (Path(work)/'docs', Path(work)/'docs-md') if work else (STAGE, MARKDOWN)
    nav = stage(nbs, docs, execute, md)
    cfg = load_config(str(ROOT/'mkdocs.yml'), docs_dir=str(docs), site_dir=str(site), nav=nav,
                      site_url=site_url(), strict=strict)
    mkdocs_build(cfg)
    for f in md.glob('*.html.md'): shutil.copy(f, site/f.name)
    return site


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--execute', action='store_true', help='run every notebook in a kernel first, for the outputs and plots')
    ap.add_argument('--site', default=str(SITE), help='where the site goes (default: _docs/)')
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    t0 = time.time()
    site = build(site=Path(a.site), execute=a.execute)
    print(f'docs: {len(notebooks())} pages in {time.time() - t0:.0f}s: {site/"index.html"}')


if __name__ == '__main__': main()
