"""Every number shown in README.md and on the documentation pages (docs/*.md) comes from the committed results, and
no notebook's prose types a result (a mean ± std or a percentage with decimals) that no committed table holds.

tools/render_docs.py rewrites the blocks between `<!-- begin:KIND ARGS -->` and `<!-- end:KIND ARGS -->` from
committed files. Here every block is re-rendered in memory and must equal what the page holds (a stale block fails),
and every "mean ± std" figure and every percentage outside a block must appear in a committed table. Planted wrong
digits, inside a block, outside one and in a committed table, show that the checks bite."""
import importlib.util, re, shutil

import pytest

from helpers import ROOT

spec = importlib.util.spec_from_file_location('render_docs', ROOT/'tools'/'render_docs.py')
R = importlib.util.module_from_spec(spec)
spec.loader.exec_module(R)

PAGES = R.pages(ROOT)
# a "mean ± std" figure (signed or not), and a percentage
PM = re.compile(r'[+\-−]?\d+(?:\.\d+)? ?± ?\d+(?:\.\d+)?')
PCT = re.compile(r'(?<![\w.])\d+(?:\.\d+)? ?%')


def figures(text: str) -> list:
    "The mean ± std figures and percentages of `text`, outside rendered blocks, code spans and code fences."
    text = R.BLOCK.sub(' ', text)
    text = re.sub(r'^```.*?^```', ' ', text, flags=re.S | re.M)
    text = re.sub(r'`[^`\n]*`', ' ', text)
    return [m.group(0) for rx in (PM, PCT) for m in rx.finditer(text)]


def committed_text(root=ROOT) -> str:
    "Every committed table file, one string (figures normalised as in `_norm`)."
    return _norm('\n'.join(p.read_text() for pat in R.TABLE_FILES for p in sorted(root.glob(pat))))


def _norm(s: str) -> str: return s.replace('−', '-').replace(' %', '%')


def unbacked(text: str, committed: str) -> list:
    "Figures of `text` (outside blocks) that no committed table holds."
    def held(f):   # the same figure, not a part of a longer number
        return re.search(r'(?<![\d.])' + re.escape(_norm(f).lstrip('+-')) + r'(?![\d])', committed) is not None
    return [f for f in figures(text) if not held(f)]


def test_pages_have_rendered_blocks():
    "Not vacuous: the README and the results page render their numbers, and the README shows no figure typed by hand."
    readme = (ROOT/'README.md').read_text()
    keys = [m['key'] for m in R.BLOCK.finditer(readme)]
    assert 'verdict' in keys and 'headline' in keys and any(k.startswith('runs ') for k in keys), keys
    results = (ROOT/'docs'/'results.md').read_text()
    assert len(PM.findall(''.join(m['body'] for m in R.BLOCK.finditer(results)))) > 100
    assert figures(readme) == [], figures(readme)


@pytest.mark.parametrize('page', PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_rendered_block_is_fresh(page):
    stale = R.stale_blocks(page.read_text())
    assert not stale, f'{page.name}: stale blocks {stale}: run `python tools/render_docs.py`'


@pytest.mark.parametrize('page', PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_shown_figure_is_in_a_committed_table(page):
    bad = unbacked(page.read_text(), committed_text())
    assert not bad, f'{page.name}: figures in no committed table (render them from results): {bad}'


NOTEBOOKS = sorted(ROOT.glob('nbs/**/*.ipynb'))
DECIMAL_PCT = re.compile(r'(?<![\w.])\d+\.\d+ ?%')


def notebook_prose(nb) -> str:
    "The markdown cells of a notebook, one string (code cells and their outputs compute what they show)."
    import json
    return '\n\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'markdown')


def result_figures(text: str) -> list:
    "The figures of a notebook's prose that only a measurement gives: mean ± std and percentages with decimals\n    (whole percentages there are a method's parameters, e.g. '90 % easy samples', or a test's threshold)."
    return [f for f in figures(text) if PM.fullmatch(f) or DECIMAL_PCT.fullmatch(f)]


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.relative_to(ROOT).as_posix() for p in NOTEBOOKS])
def test_no_notebook_types_a_result(nb):
    "A result a notebook's prose states is in a committed table, or the notebook computes it in a cell.\n    Limits: it sees mean ± std figures and percentages with decimals only (a bare decimal such as a weight of\n    0.045 passes), and a figure that stands anywhere in a committed table passes even beside another result."
    committed = committed_text()
    bad = [f for f in result_figures(notebook_prose(nb)) if f in unbacked(f, committed)]
    assert not bad, f'{nb.name}: figures in no committed table (compute them in a cell from tables/ or results/): {bad}'


def test_a_typed_result_in_a_notebook_is_caught():
    committed = committed_text()
    prose = notebook_prose(ROOT/'nbs'/'method.ipynb')
    assert result_figures(prose + '\nR scored 83.17 ± 0.94 and 81.6 % there, with 90 % easy samples.\n') == ['83.17 ± 0.94', '81.6 %']
    assert [f for f in result_figures('R scored 83.17 ± 0.94.') if f in unbacked(f, committed)] == ['83.17 ± 0.94']


def _plant(text: str, start: int) -> str:
    "`text` with the first digit of the first mean ± std figure at or after `start` changed."
    m = PM.search(text, start)
    i = m.start() + next(k for k, ch in enumerate(m.group(0)) if ch.isdigit())
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]


def committed_cell(rel: str, first: str, col: int, root=ROOT) -> str:
    "The mean ± std figure of a committed table's row starting with `first`, in column `col` (cells from 0)."
    row = next(l for l in (root/rel).read_text().splitlines() if l.startswith(f'| {first} |'))
    return PM.search(row.strip('|').split('|')[col]).group(0)


def test_a_planted_wrong_digit_fails():
    readme = (ROOT/'README.md').read_text()
    committed = committed_text()
    # inside a rendered block (the headline table): the block is stale
    planted = _plant(readme, readme.index('<!-- begin:headline -->'))
    assert planted != readme and R.stale_blocks(planted) == ['headline']
    # outside any block: a figure typed into the prose is in no committed table
    fig = committed_cell('tables/fmnist_lt.md', 'Seesaw', 3)                # Seesaw at IF 100, as committed
    typed = readme + f'\nSeesaw scores {fig} at IF 100.\n'
    assert unbacked(typed, committed) == []                            # a true figure copied from a table passes ...
    wrong = _plant(typed, len(readme))
    assert unbacked(wrong, committed) == [str((int(fig[0]) + 1) % 10) + fig[1:]]   # ... a wrong digit does not
    assert unbacked(readme + '\nthe rarest quartile reaches 88.8 %\n', committed) == ['88.8 %']


def test_a_changed_committed_table_makes_the_page_stale(tmp_path):
    "The render reads the committed files: one changed digit in tables/ makes the README's blocks stale."
    for d in ('tables', 'configs', 'results'):
        (tmp_path/d).symlink_to(ROOT/d)
    (tmp_path/'tables').unlink()
    shutil.copytree(ROOT/'tables', tmp_path/'tables')
    readme = (ROOT/'README.md').read_text()
    assert R.stale_blocks(readme, tmp_path) == []
    t = tmp_path/'tables'/'fmnist_lt_budget.md'
    fig = next(f for f in PM.findall(next(l for l in t.read_text().splitlines() if '| ours − Seesaw |' in l)))  # IF 100, cpu
    changed = fig[:-1] + str((int(fig[-1]) + 1) % 10)
    t.write_text(t.read_text().replace(f'{fig} reversed', f'{changed} reversed', 1))
    assert R.stale_blocks(readme, tmp_path) == ['verdict']
    t = tmp_path/'tables'/'fmnist_lt.md'
    fig = committed_cell('tables/fmnist_lt.md', 'Seesaw', 3, tmp_path)
    t.write_text(t.read_text().replace(fig, fig[:4] + str((int(fig[4]) + 1) % 10) + fig[5:]))
    assert R.stale_blocks(readme, tmp_path) == ['verdict', 'headline']


def test_render_check_exits_one_naming_a_stale_block(tmp_path, monkeypatch, capsys):
    "`python tools/render_docs.py --check` on a page with a stale block: exit 1, the block named, nothing rewritten."
    page = tmp_path/'README.md'
    page.write_text(_plant((ROOT/'README.md').read_text(), 0))
    before = page.read_text()
    monkeypatch.setattr(R, 'pages', lambda root=None: [page])
    monkeypatch.setattr(R, 'ROOT', tmp_path)
    assert R.main(['--check']) == 1 and 'README.md: verdict' in capsys.readouterr().err and page.read_text() == before
