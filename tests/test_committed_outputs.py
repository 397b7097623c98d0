"""Notebooks committed with their outputs (the Makefile's NOTEBOOKS_WITH_OUTPUTS, re-executed by `make notebooks`): a
reader on a code host sees their figures and tables without running anything, and the outputs are the same bytes in
every checkout (no absolute path of the checkout, no execution counts)."""
import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def committed_with_outputs() -> list:
    "The notebooks that the Makefile's `notebooks` target executes, as paths relative to the project."
    text = (ROOT/'Makefile').read_text().replace('\\\n', ' ')
    m = re.search(r'^NOTEBOOKS_WITH_OUTPUTS\s*:=\s*(.+)$', text, re.M)
    assert m, 'the Makefile names no NOTEBOOKS_WITH_OUTPUTS'
    return m.group(1).split()


def outputs(path) -> list:
    "Every output of every code cell of a notebook file."
    nb = json.loads((ROOT/path).read_text())
    return [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]


def text_of(path) -> str:
    "All text a notebook's outputs show (streams and text/* data)."
    out = []
    for o in outputs(path):
        out.append(''.join(o.get('text', '')))
        out += [''.join(v) for k, v in o.get('data', {}).items() if k.startswith('text/')]
    return '\n'.join(out)


def test_the_list_names_the_picture_notebooks_and_every_paper_notebook():
    nbs = committed_with_outputs()
    assert all((ROOT/p).is_file() for p in nbs), nbs
    assert {'nbs/losses/02_binning.ipynb', 'nbs/method.ipynb'} <= set(nbs)
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT/'nbs'/'paper').glob('*.ipynb')} <= set(nbs)


@pytest.mark.parametrize('path', [p for p in committed_with_outputs() if not p.startswith('nbs/paper/')])
def test_library_notebook_shows_a_picture(path):
    assert any('image/png' in o.get('data', {}) for o in outputs(path)), f'{path} is committed without its figure'


@pytest.mark.parametrize('path', [p for p in committed_with_outputs() if p.startswith('nbs/paper/')])
def test_paper_notebook_shows_its_tables(path):
    kinds = {k for o in outputs(path) for k in o.get('data', {})}
    assert kinds & {'text/markdown', 'text/html'}, f'{path} is committed without its tables'


@pytest.mark.parametrize('table', ['table1', 'table2', 'table3'])
def test_unmeasured_paper_tables_say_so(table):
    "Nothing of Tables 1-3 is measured yet: the committed notebooks say so and show — rather than a number."
    path = f'nbs/paper/{table}.ipynb'
    if 'Nothing measured yet' not in text_of(path): pytest.skip(f'{table} has results now')
    assert '| — |' in text_of(path)


@pytest.mark.parametrize('path', committed_with_outputs())
def test_outputs_are_the_same_in_every_checkout(path):
    nb = json.loads((ROOT/path).read_text())
    assert str(ROOT) not in text_of(path), f'{path} prints an absolute path of this checkout'
    assert all(c.get('execution_count') is None for c in nb['cells'] if c['cell_type'] == 'code'), f'{path} is not cleaned'
    assert all(o.get('execution_count') is None for o in outputs(path))
