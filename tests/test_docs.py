"""The documentation site (`make docs`): built fresh from the committed notebooks into a temporary folder (nothing is
executed), then every built page is opened in headless Chromium (Debian's `chromium`, which `make test` installs):
each page loads, every image on it renders with a non-zero size, and every internal link resolves to a built file,
and to an element of that page when it names an anchor.

One Chromium process loads a harness page from a local HTTP server; the harness opens the pages one by one in an
iframe (same origin, so it can read their DOM) and posts what it found back to the server. A control page with a
broken image, a broken link and a broken anchor is checked in the same run, so the checks are known to bite."""
import json, os, re, shutil, signal, subprocess, sys, threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_BUILD = ['build', '.', '--config', 'docs/_config.yml', '--toc', 'docs/_toc.yml']   # the Makefile's `docs` recipe
OPTIONAL_PAGES = ("toctree glob pattern 'nbs/method' didn't match any documents",)   # method.ipynb may not exist yet
CONTROL = '__control.html'

pytestmark = pytest.mark.slow


def _tool(name):
    "`name` from this interpreter's environment first (the venv), else from PATH."
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')]))


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site as `make docs` does, into a temporary folder; the folder of its HTML pages."
    jb = _tool('jupyter-book')
    assert jb, 'jupyter-book is missing: it is a dev dependency (pip install -e ".[dev]", or make install)'
    out = tmp_path_factory.mktemp('docs')
    p = subprocess.run([jb, *DOCS_BUILD, '--path-output', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = re.sub(r'\x1b\[[0-9;]*m', '', p.stdout + p.stderr)
    assert p.returncode == 0, log[-4000:]
    warnings = [l for l in log.splitlines() if 'WARNING' in l and not any(w in l for w in OPTIONAL_PAGES)]
    assert not warnings, 'the docs build warns:\n' + '\n'.join(warnings)
    return out / '_build' / 'html'


def pages_of(html: Path) -> list:
    "Paths (relative, posix) of the built HTML pages: everything but Sphinx's own folders (_static, _sources, ...)."
    return sorted(p.relative_to(html).as_posix() for p in html.rglob('*.html') if not p.relative_to(html).parts[0].startswith('_'))


HARNESS = """<!doctype html><meta charset="utf-8"><title>harness</title>
<iframe id="f" style="width:1200px;height:1600px"></iframe>
<script>
const pages = PAGES, f = document.getElementById('f');
const settle = img => img.complete ? Promise.resolve() : new Promise(r => {
  img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 10000); });
async function check(page) {
  await new Promise(r => { f.onload = r; f.src = '/' + page; });
  const d = f.contentDocument, imgs = [...d.images], refresh = d.querySelector('meta[http-equiv="refresh" i]');
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(settle));
  const main = d.querySelector('main, article, [role=main]') || d.body;
  return {page, url: f.contentWindow.location.href, title: d.title, text: main ? main.innerText.trim().length : 0,
    refresh: refresh ? new URL(refresh.content.replace(/^[^;]*;\\s*url=/i, ''), f.contentWindow.location.href).href : null,
    images: imgs.map(i => { const b = i.getBoundingClientRect();
      return {src: i.getAttribute('src'), nw: i.naturalWidth, nh: i.naturalHeight, w: b.width, h: b.height,
              shown: i.offsetParent !== null}; }),
    links: [...d.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...d.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name'))};
}
(async () => {
  const out = [];
  for (const p of pages) { try { out.push(await check(p)); } catch (e) { out.push({page: p, error: String(e)}); } }
  await fetch('/__report', {method: 'POST', body: JSON.stringify(out)});
})();
</script>"""

CONTROL_PAGE = """<!doctype html><meta charset="utf-8"><title>control</title><main><p>control page</p>
<img src="GOOD"><img src="_images/no-such-figure.png">
<a href="no-such-page.html">x</a><a href="GOODPAGE#no-such-anchor">y</a><a href="GOODPAGE">z</a></main>"""


def _handler(html: Path, served: dict, report: dict, done: threading.Event):
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw): super().__init__(*a, directory=str(html), **kw)
        def log_message(self, *a): pass
        def do_GET(self):
            body = served.get(self.path.lstrip('/'))
            if body is None: return super().do_GET()
            self.send_response(200)
            self.send_header('Content-Type', 'text/html; charset=utf-8')
            self.end_headers()
            self.wfile.write(body.encode())
        def do_POST(self):
            report['pages'] = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
            self.send_response(204)
            self.end_headers()
            done.set()
    return Handler


def browse(html: Path, pages: list, served: dict, tmp: Path, timeout=300) -> list:
    "Open `pages` (under `html`, plus the in-memory `served` ones) in one headless Chromium; what the harness saw."
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if not chromium: pytest.skip("no chromium: `make test` installs Debian's package (apt-get install chromium)")
    report, done = {}, threading.Event()
    served = dict(served, **{'__harness.html': HARNESS.replace('PAGES', json.dumps(pages))})
    server = ThreadingHTTPServer(('127.0.0.1', 0), _handler(html, served, report, done))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
             '--disable-background-networking', '--disable-component-update', '--disable-extensions',
             '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',   # nothing leaves the machine (MathJax's CDN)
             f'--user-data-dir={tmp}', '--window-size=1280,1800']
    url = f'http://127.0.0.1:{server.server_port}/__harness.html'
    proc = subprocess.Popen([chromium, *flags, url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)   # its own process group: the renderers go with it
    try: done.wait(timeout)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        server.shutdown()
        server.server_close()
    assert 'pages' in report, f'chromium reported nothing within {timeout} s'
    return report['pages']


def problems(res: dict, html: Path, ids: dict) -> list:
    "What is wrong with one page the harness saw: not loaded, an image without size, an internal link or anchor that misses."
    if 'error' in res: return [f"not loaded: {res['error']}"]
    out = []
    if not res['refresh'] and not (res['title'].strip() and res['text'] > 0): out.append('loads empty (no title or no text)')
    for i in res['images']:
        if not (i['nw'] > 0 and i['nh'] > 0): out.append(f"image does not render: {i['src']}")
        elif i['shown'] and not (i['w'] > 0 and i['h'] > 0): out.append(f"image shown with zero size: {i['src']}")
    origin = urlsplit(res['url']).netloc
    for link in res['links'] + ([res['refresh']] if res['refresh'] else []):
        u = urlsplit(link)
        if u.scheme not in ('http', 'https') or u.netloc != origin: continue   # external, mailto:, javascript:
        path = unquote(u.path).lstrip('/') or 'index.html'
        if path.endswith('/'): path += 'index.html'
        if not (html / path).is_file() and path not in ids: out.append(f'broken link: {link}')
        elif u.fragment and path in ids and unquote(u.fragment) not in ids[path]: out.append(f'missing anchor: {link}')
    return out


def test_every_page_loads_renders_its_images_and_links_resolve(site, tmp_path):
    pages = pages_of(site)
    nbs = sorted(p.relative_to(ROOT).with_suffix('.html').as_posix() for d in ('nbs', 'nbs/paper')
                 for p in (ROOT / d).glob('*.ipynb') if d != 'nbs' or p.name[0].isdigit())
    assert set(nbs) <= set(pages), f'notebooks without a page: {sorted(set(nbs) - set(pages))}'
    assert {'index.html', 'docs/index.html', 'docs/readme.html', 'docs/figures.html'} <= set(pages)
    good_img = next(site.glob('_images/*.png')).relative_to(site).as_posix()
    control = CONTROL_PAGE.replace('GOODPAGE', 'docs/index.html').replace('GOOD', good_img)
    seen = {r['page']: r for r in browse(site, pages + [CONTROL], {CONTROL: control}, tmp_path)}
    assert set(seen) == set(pages) | {CONTROL}
    ids = {p: set(r.get('ids', [])) for p, r in seen.items()}

    # The checks bite: the control page's broken image, link and anchor are each found, its good ones pass.
    ctl = problems(seen.pop(CONTROL), site, ids)
    assert len(ctl) == 3 and [p.split(':')[0] for p in ctl] == ['image does not render', 'broken link', 'missing anchor'], ctl

    bad = {p: pr for p, r in seen.items() if (pr := problems(r, site, ids))}
    assert not bad, 'pages with problems:\n' + '\n'.join(f'{p}: {x}' for p, prs in bad.items() for x in prs)
    # Not vacuous: the figure gallery shows every committed figure, and the README's own anchors resolve.
    figs = [i for i in seen['docs/figures.html']['images'] if i['shown']]
    assert len(figs) == len(list((ROOT / 'figures').glob('*.png'))) > 0
    assert any(l.endswith('docs/readme.html#results-at-cpu-scale') for l in seen['docs/readme.html']['links'])
    # Notebook pages read like nbdev's docs (docs/nbdev_cells.py): no `#| hide` cell, no `#| ...` directive line.
    leftovers = [p for p in nbs if '#| ' in (site / p).read_text()]
    assert not leftovers, f'nbdev directives left on {leftovers}'
