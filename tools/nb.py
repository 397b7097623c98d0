"""Authoring helper: convert between nbs/*.ipynb (the source of truth) and a percent-format text view.

    python tools/nb.py to-py nbs/00_losses.ipynb > /tmp/00_losses.py    # read/edit as text
    python tools/nb.py to-nb /tmp/00_losses.py nbs/00_losses.ipynb      # write the notebook back

Cells are separated by lines `# %%` (code), `# %% [markdown]` (markdown, each line prefixed `# `) and
`# %% tags=["parameters"]` (code cell with tags). Outputs are never written: run nbdev-clean afterwards.
"""
import json, re, sys

def to_nb(src):
    cells, cur = [], None
    for line in src.splitlines():
        m = re.match(r'^# %%( \[markdown\])?( tags=(\[.*\]))?\s*$', line)
        if m:
            if cur: cells.append(cur)
            cur = dict(kind='markdown' if m.group(1) else 'code', tags=json.loads(m.group(3)) if m.group(3) else None, lines=[])
            continue
        if cur is None: continue
        if cur['kind'] == 'markdown': line = line[2:] if line.startswith('# ') else line.lstrip('#')
        cur['lines'].append(line)
    if cur: cells.append(cur)
    out = []
    for c in cells:
        while c['lines'] and not c['lines'][-1].strip(): c['lines'].pop()
        while c['lines'] and not c['lines'][0].strip(): c['lines'].pop(0)
        text = '\n'.join(c['lines'])
        cell = dict(cell_type=c['kind'], metadata={}, source=text)
        if c['tags']: cell['metadata']['tags'] = c['tags']
        if c['kind'] == 'code': cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return dict(cells=out, metadata=dict(kernelspec=dict(display_name='Python 3', language='python', name='python3')),
                nbformat=4, nbformat_minor=5)

def to_py(nb):
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        tags = c.get('metadata', {}).get('tags')
        if c['cell_type'] == 'markdown':
            parts.append('# %% [markdown]\n' + '\n'.join('# ' + l if l else '#' for l in src.splitlines()))
        else:
            parts.append('# %%' + (f' tags={json.dumps(tags)}' if tags else '') + '\n' + src)
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    cmd, *args = sys.argv[1:]
    if cmd == 'to-nb':
        nb = to_nb(open(args[0]).read())
        with open(args[1], 'w') as f: json.dump(nb, f, indent=1); f.write('\n')
    elif cmd == 'to-py': sys.stdout.write(to_py(json.load(open(args[0]))))
    else: sys.exit(f'unknown command {cmd!r}: use to-py or to-nb')
