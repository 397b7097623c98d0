"""Sphinx extension of the documentation site: appends every committed figures/*.png to docs/figures.md at build
time, so the gallery never lists a figure that is gone or misses a new one."""
from pathlib import Path

GALLERY = 'docs/figures'

def figure_entries(root: Path) -> str:
    "MyST figure directives for each figures/*.png under `root`, sorted by name, with a link to its PDF when present."
    out = []
    for png in sorted((root / 'figures').glob('*.png')):
        pdf = png.with_suffix('.pdf')
        caption = f'`figures/{png.name}`' + (f' ({{download}}`PDF <../figures/{pdf.name}>`)' if pdf.is_file() else '')
        out.append(f'## {png.stem}\n\n```{{figure}} ../figures/{png.name}\n:width: 100%\n:alt: {png.stem}\n\n{caption}\n```\n')
    return '\n'.join(out) if out else 'No figure is committed yet.\n'

def _append_gallery(app, docname, source):
    if docname == GALLERY: source[0] += '\n' + figure_entries(Path(app.srcdir))

def setup(app):
    app.connect('source-read', _append_gallery)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
