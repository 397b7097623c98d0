"""Sphinx extension of the documentation site: shows a notebook as nbdev's own docs would. Cells marked `#| hide` and
the `#| default_exp` cell are dropped, and the `#| ...` directive lines are removed from the code cells that remain.
Works on the notebook's JSON before myst-nb parses it; the notebook file is not changed."""
import json, re

DIRECTIVE = re.compile(r'^\s*#\s*\|\s*(\S+)')

def directives(source: str) -> list:
    "Names of the `#| name ...` directives of a cell (nbdev's `#|` comments), in order."
    return [m.group(1).rstrip(':') for l in source.splitlines() if (m := DIRECTIVE.match(l))]

def shown(cell: dict) -> bool:
    "Whether a cell appears on the page: not `#| hide`, not the `#| default_exp` cell, not empty after stripping."
    src = ''.join(cell['source'])
    if cell['cell_type'] != 'code': return True
    if {'hide', 'default_exp'} & set(directives(src)): return False
    return bool(strip_directives(src).strip() or cell.get('outputs'))

def strip_directives(source: str) -> str:
    "The source without its `#| ...` lines."
    return ''.join(l for l in source.splitlines(keepends=True) if not DIRECTIVE.match(l))

def clean_notebook(text: str) -> str:
    "The notebook JSON `text` with hidden cells dropped and directive lines removed."
    nb = json.loads(text)
    nb['cells'] = [c for c in nb['cells'] if shown(c)]
    for c in nb['cells']:
        if c['cell_type'] == 'code': c['source'] = strip_directives(''.join(c['source']))
    return json.dumps(nb)

def _clean(app, docname, source):
    if str(app.env.doc2path(docname)).endswith('.ipynb'): source[0] = clean_notebook(source[0])

def setup(app):
    app.connect('source-read', _clean)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
