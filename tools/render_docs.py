"""Render every result shown in README.md and the documentation pages (docs/*.md) from the committed files.

A rendered block sits between two HTML comments, `<!-- begin:KIND ARGS -->` and `<!-- end:KIND ARGS -->`, and is
rewritten from committed files only; the text around it is left as written. Kinds (see RENDERERS):

  file PATH                 the committed file PATH verbatim (a table under tables/, results/<profile>/tables/,
                            benchmarks/results/)
  table PATH N              the N-th pipe table of that file, with the paragraph right above it
  headline                  the CPU table (tables/fmnist_lt.md) without its orientation lines
  verdict                   one sentence: the paper's claims at every training budget (tables/fmnist_lt_budget.md)
  readings                  a table: each reading of A against Seesaw and R, per imbalance factor, at the shortest
                            and longest budget measured (tables/fmnist_lt_readings.md)
  losses                    the names of ltpaper.losses.LOSSES
  runs TABLE PROFILE SEEDS  how many runs `ltpaper reproduce TABLE --profile PROFILE --seeds SEEDS` makes
  run-minutes TABLE PROFILE SEEDS
                            the minutes of training those runs took, summed from their committed metrics.json
  runs-table TABLE PROFILE  the committed runs of that profile: device, epochs, wall-clock minutes, images/s

`python tools/render_docs.py` rewrites the blocks in place; `--check` rewrites nothing and exits 1 naming every
stale block. tests/test_rendered_numbers.py re-renders in memory and checks that no shown figure is typed."""
import argparse, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ['README.md', 'docs/*.md']                       # the files whose blocks are rendered
BLOCK = re.compile(r'<!-- begin:(?P<key>[^>]*?) -->(?P<body>.*?)<!-- end:(?P=key) -->', re.S)
TABLE_FILES = ['tables/*.md', 'results/*/tables/*.md', 'benchmarks/results/*.md', 'benchmarks/results/*/*.md']


# ---------------------------------------------------------------- reading committed Markdown tables
def md_tables(text: str) -> list:
    "Every pipe table of `text`: dict(caption (the bold line before it, or ''), header, rows), cells stripped."
    out, lines, caption = [], text.splitlines(), ''
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('**') and line.rstrip().endswith('**'): caption = line.strip('* ')
        if line.startswith('|') and i + 1 < len(lines) and re.fullmatch(r'\|(\s*:?-+:?\s*\|)+', lines[i + 1].strip()):
            cells = lambda l: [c.strip() for c in l.strip().strip('|').split('|')]
            start = i
            while start > 0 and lines[start - 1].strip() and not lines[start - 1].startswith('#'): start -= 1
            header, rows, i = cells(line), [], i + 2
            while i < len(lines) and lines[i].startswith('|'):
                rows.append(cells(lines[i]))
                i += 1
            out.append(dict(caption=caption, header=header, rows=rows, lines=(start, i)))
            caption = ''
            continue
        i += 1
    return out


def _read(root: Path, rel: str) -> str:
    p = root/rel
    if not p.is_file(): raise FileNotFoundError(f"render_docs: {rel} is not committed; render the table first")
    return p.read_text()


# ---------------------------------------------------------------- the renderers
def r_file(root, rel):
    "A committed file verbatim (its caption, table and notes)."
    return _read(root, rel).strip()


def r_table(root, rel, n):
    "The n-th pipe table (from 1) of a committed file, with the paragraph right above it."
    text = _read(root, rel)
    t = md_tables(text)
    if not 1 <= int(n) <= len(t): raise ValueError(f"render_docs: {rel} has {len(t)} tables, not a table {n}")
    a, b = t[int(n) - 1]['lines']
    return '\n'.join(text.splitlines()[a:b]).strip()


def r_headline(root):
    "The CPU table: the reproduced line of every method (the paper's CIFAR-10-LT orientation lines left out)."
    text = _read(root, 'tables/fmnist_lt.md')
    (t,) = [t for t in md_tables(text) if t['header'][0] == 'method']
    head = ['method'] + [h.replace('Fashion-MNIST-LT ', '') for h in t['header'][2:]]
    rows = [[r[0]] + r[2:] for r in t['rows'] if r[1] == 'reproduced']
    notes = [l[2:].split(';')[0] for l in text.splitlines() if l.startswith('- n = ')]
    lines = [f"**{t['caption']}** (`tables/fmnist_lt.md`{'; ' + notes[0] if notes else ''})", '',
             '| ' + ' | '.join(head) + ' |', '|:--' + '|--:' * (len(head) - 1) + '|']
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


_VERDICT = re.compile(r'(?P<fig>[+\-−]?\d+\.\d+ ± \d+\.\d+) (?P<word>holds|reversed|tie)$')
# The steps the verdict sentence reads: the margins against Softmax, the paper's loss against Seesaw, A added to R.
VERDICT_STEPS = [('IF 100', 'ours − Seesaw'), ('IF 100', 'R+A+U − R'), ('IF 100', 'R − Softmax')]
_WORD = dict(holds='above', reversed='below', tie='level with')


def claims(root, rel='tables/fmnist_lt_budget.md', by_claim=False) -> dict:
    """{(imbalance factor, step): [(budget, epochs, figure, verdict word)]} of the claims table of `rel` (the budgets'
    epochs from tables/fmnist_lt_budget.md); `by_claim`: keyed (claim, imbalance factor) instead."""
    budget = _read(root, 'tables/fmnist_lt_budget.md')
    budgets = [t for t in md_tables(budget) if t['header'][0] == 'imbalance factor']
    epochs = {h.split(':')[0]: int(re.search(r'(\d+) ep\.', h).group(1)) for h in budgets[0]['header'][2:]}
    (t,) = [t for t in md_tables(_read(root, rel)) if t['header'][:3] == ['claim', 'imbalance factor', 'step a − b']]
    out, claim, imb = {}, None, None
    for r in t['rows']:
        claim, imb = r[0] or claim, r[1] or imb
        cells = []
        for b, c in zip(t['header'][3:], r[3:]):
            m = _VERDICT.match(c)
            if m and b in epochs: cells.append((b, epochs[b], m['fig'].replace('-', '−'), m['word']))
        out[(claim, imb) if by_claim else (imb, r[2])] = cells
    return out


def r_verdict(root):
    "One sentence: each step of VERDICT_STEPS at its shortest and longest measured budget, and what that says."
    cl, parts, words = claims(root), [], {}
    for imb, step in VERDICT_STEPS:
        cells = cl.get((imb, step), [])
        if not cells: continue
        a, b = step.split(' − ')
        ws = {w for *_, w in cells}
        words[step] = ws.pop() if len(ws) == 1 else 'mixed'
        figs = f'{cells[0][2]} points at {cells[0][1]} epochs' + (f', {cells[-1][2]} at {cells[-1][1]}' if len(cells) > 1 else '')
        rel = _WORD[words[step]] if words[step] != 'mixed' else 'above or below, depending on the budget,'
        parts.append(f"{a} scores {rel} {b} ({figs})" if not parts else f"{a} {rel} {b} ({figs})")
    if not parts: return 'No claim of the paper has been measured yet.'
    every = 'at every training budget measured, ' if 'mixed' not in words.values() else ''
    say = {('R − Softmax', 'holds'): 'the margins R help', ('R − Softmax', 'reversed'): 'the margins R hurt',
           ('R+A+U − R', 'reversed'): 'the intra-category weights A cost accuracy on top of them',
           ('R+A+U − R', 'holds'): 'the intra-category weights A add to them',
           ('ours − Seesaw', 'reversed'): "the paper's loss does not beat Seesaw",
           ('ours − Seesaw', 'holds'): "the paper's loss beats Seesaw"}
    so = [say[(s, words[s])] for s in ('R − Softmax', 'R+A+U − R', 'ours − Seesaw') if (s, words.get(s)) in say]
    listed = ', '.join(parts[:-1]) + ' and ' + parts[-1] if len(parts) > 1 else parts[0]
    return (f'On Fashion-MNIST-LT at IF 100 (test top-1, paired differences over seeds), {every}{listed}'
            + (': ' + ', '.join(so) + '.' if so else '.'))


# The readings of the paper's A (tables/fmnist_lt_readings.md, written by the budget notebook), in its order.
READINGS = [("the paper's", 'ours'), ('tuned', 'ours_tuned'), ('GHM-C per class', 'ours_ghmc'),
            ('prototype', 'ours_prototype'), ('global histogram', 'ours_global')]


def _span(cells) -> str:
    "A claim's figures at its shortest and longest measured budget, epochs in brackets: '−16.49 ± 1.61 (10) → −9.99 ± 2.34 (100)'."
    if not cells: return '—'
    one = lambda c: f"{c[2]} ({c[1]})"
    return one(cells[0]) if len(cells) == 1 else f"{one(cells[0])} → {one(cells[-1])}"


def _words(cells) -> list:
    "The verdict words at the shortest and longest budget measured (one word when they agree)."
    ws = [cells[0][3], cells[-1][3]] if cells else []
    return ws[:1] if len(set(ws)) == 1 else ws


def r_readings(root):
    """Each reading of A in the place of `ours`: its test top-1 minus Seesaw's and minus R's (paired over seeds) at
    IF 100 and IF 500, at the shortest and longest budget measured, and whether the paper's claim (ours > Seesaw and
    ours ≥ R) holds at each imbalance factor (tables/fmnist_lt_readings.md)."""
    cl = claims(root, 'tables/fmnist_lt_readings.md', by_claim=True)
    lines = ['| reading of A | loss | − Seesaw, IF 100 | − Seesaw, IF 500 | − R, IF 100 | − R, IF 500 | ours > Seesaw and ≥ R |',
             '|:--|:--|--:|--:|--:|--:|:--|']
    for name, loss in READINGS:
        get = lambda rel, f: cl.get((f"{name}: ours {rel}", f"IF {f}"), [])
        cells, says = [], {}
        for rel in ('> Seesaw', '≥ R'):
            for f in (100, 500):
                c = get(rel, f)
                cells.append(_span(c))
        for f in (100, 500):
            sw, rw = _words(get('> Seesaw', f)), _words(get('≥ R', f))
            if not sw or not rw: continue
            says[f] = ('fails' if 'reversed' in sw + rw else 'holds' if set(sw) == {'holds'} else 'tie')
        by = {}
        for f, w in says.items(): by.setdefault(w, []).append(f'IF {f}')
        verdict = ('not measured' if not says else next(iter(by)) if len(by) == 1
                   else ', '.join(f"{w} at {' and '.join(fs)}" for w, fs in by.items()))
        lines.append(f"| {name} | `{loss}` | " + ' | '.join(cells) + f" | {verdict} |")
    return '\n'.join(lines)


def r_losses(root):
    "The names in ltpaper.losses.LOSSES, in the registry's order."
    sys.path.insert(0, str(ROOT))
    from ltpaper.losses import LOSSES
    return ', '.join(f'`{n}`' for n in LOSSES)


def _jobs(table, profile, seeds):
    sys.path.insert(0, str(ROOT))
    from ltpaper.pipeline.runs import parse_seeds, plan_jobs
    return plan_jobs(table, profile, seeds=parse_seeds(seeds) if seeds else None)


def r_runs(root, table, profile, seeds):
    "How many runs a reproduce call of this table, profile and seeds makes."
    return str(len(_jobs(table, profile, seeds)))


def r_run_minutes(root, table, profile, seeds):
    "Minutes of training (one core each) that the committed runs of this selection recorded, summed."
    total = 0.0
    for j in _jobs(table, profile, seeds):
        p = Path(j.out_dir)/'metrics.json'
        if not p.is_file(): raise FileNotFoundError(f"render_docs: {p} is not committed")
        total += json.loads(p.read_text())['wall_time_s']
    return f'{total / 60:.0f}'


def r_runs_table(root, table, profile):
    "The committed runs of a table's profile: row, seed, device, epochs, wall-clock minutes, images/s (their metrics.json)."
    lines = ['| row | seed | device | epochs | minutes (wall clock) | images/s |', '|:--|--:|:--|--:|--:|--:|']
    for j in _jobs(table, profile, None):
        p = Path(j.out_dir)/'metrics.json'
        if not p.is_file(): continue
        m = json.loads(p.read_text())
        dev = m['provenance'].get('device') or m['config'].get('device')
        lines.append(f"| {j.row} | {j.seed} | {dev} | {len(m['history'])} | {m['wall_time_s'] / 60:.1f} | {m['images_per_s']:,.0f} |")
    return '\n'.join(lines) if len(lines) > 2 else 'No run of this profile is committed.'


RENDERERS = {'file': r_file, 'table': r_table, 'headline': r_headline, 'verdict': r_verdict, 'readings': r_readings,
             'losses': r_losses, 'runs': r_runs, 'run-minutes': r_run_minutes, 'runs-table': r_runs_table}


# ---------------------------------------------------------------- rewriting the blocks
def render_block(key: str, root: Path = ROOT) -> str:
    "The content of block `key` ('KIND ARGS'), rendered from the files under `root`."
    kind, *args = key.split()
    if kind not in RENDERERS: raise ValueError(f"render_docs: unknown block kind {kind!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[kind](root, *args)


def _inline(body: str) -> bool: return '\n' not in body


def render_text(text: str, root: Path = ROOT) -> str:
    "`text` with every block rewritten; a block written on one line stays inline, others get a blank line around."
    def sub(m):
        new = render_block(m['key'], root)
        body = new if _inline(m['body']) and _inline(new) else f'\n\n{new}\n\n'
        return f"<!-- begin:{m['key']} -->{body}<!-- end:{m['key']} -->"
    return BLOCK.sub(sub, text)


def stale_blocks(text: str, root: Path = ROOT) -> list:
    "Keys of the blocks of `text` whose content differs from what the committed files render."
    fresh = dict((m['key'], m['body']) for m in BLOCK.finditer(render_text(text, root)))
    return [m['key'] for m in BLOCK.finditer(text) if m['body'] != fresh[m['key']]]


def pages(root: Path = ROOT) -> list:
    return sorted(p for pat in PAGES for p in root.glob(pat))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='rewrite nothing; exit 1 naming every stale block')
    a = ap.parse_args(argv)
    stale = []
    for p in pages():
        text = p.read_text()
        new = render_text(text)
        if new != text:
            if a.check: stale += [f"{p.relative_to(ROOT)}: {k}" for k in stale_blocks(text)]
            else:
                p.write_text(new)
                print(f"rendered {p.relative_to(ROOT)}")
    if stale:
        print('stale rendered blocks (run `python tools/render_docs.py`):\n  ' + '\n  '.join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
