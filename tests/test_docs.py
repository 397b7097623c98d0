"""The documentation site (`make docs`): built fresh from the committed pages and notebooks into a temporary folder
(nothing is executed), then every built page is opened in headless Chromium (Debian's `chromium`, which `make test`
installs) with every network name unresolvable, so nothing can come from outside: each page loads, every image on it
renders with a non-zero size, every internal link resolves to a built file (and to an element of that page when it
names an anchor), every Markdown table of its source is an HTML table (no raw pipe text) that fits the page or
scrolls inside a box that does, and its math is typeset by the MathJax that the site serves itself (the method page
has math). A screenshot of every page is written into the build folder (`_build/screenshots/`).

The test drives one Chromium over the DevTools protocol: it loads each page from a local HTTP server, runs the
checks in the page and captures the screenshot. A control page with a broken image, link and anchor, a raw pipe
table, a table wider than the page and untypeset math is checked in the same run, so the checks are known to bite."""
import base64, json, os, re, shutil, signal, subprocess, sys, threading, time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import urlopen

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_BUILD = ['build', '.', '--config', 'docs/_config.yml', '--toc', 'docs/_toc.yml']   # the Makefile's `docs` recipe
OPTIONAL_PAGES = ("toctree glob pattern 'nbs/method' didn't match any documents",)   # method.ipynb may not exist yet
CONTROL = '__control.html'
RAW_TABLE = re.compile(r'^\|.*\|\s*\n\|(\s*:?[-–—]+:?\s*\|)+\s*$', re.M)   # a pipe table left as text (– from --)

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


# ---------------------------------------------------------------- what a page's source holds
def _md_table_count(text: str) -> int:
    "Pipe tables in Markdown text, code fences left out."
    text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
    return len(re.findall(r'^\|.*\|[ \t]*\n\|(?:[ \t]*:?-+:?[ \t]*\|)+[ \t]*$', text, re.M))


def expected_tables(page: str) -> int:
    """How many tables the source of a built page holds: Markdown tables (pages, notebook cells, Markdown outputs) and
    HTML tables of outputs, in the cells the page shows (docs/nbdev_cells.py drops `#| hide` cells)."""
    sys.path.insert(0, str(ROOT/'docs'))
    from nbdev_cells import shown
    stem = ROOT/page[:-len('.html')]
    if stem.with_suffix('.md').is_file():
        return _md_table_count(stem.with_suffix('.md').read_text())
    if not stem.with_suffix('.ipynb').is_file(): return 0
    nb, n = json.loads(stem.with_suffix('.ipynb').read_text()), 0
    for c in filter(shown, nb['cells']):
        if c['cell_type'] == 'markdown': n += _md_table_count(''.join(c['source']))
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if 'text/html' in data: n += ''.join(data['text/html']).count('<table')
            elif 'text/markdown' in data: n += _md_table_count(''.join(data['text/markdown']))
    return n


# ---------------------------------------------------------------- the browser
CHECK = r"""(async () => {
  const d = document, imgs = [...d.images], refresh = d.querySelector('meta[http-equiv="refresh" i]');
  const settle = img => img.complete ? Promise.resolve() : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r); setTimeout(r, 10000); });
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(settle));
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) await Promise.race([mj.startup.promise, new Promise(r => setTimeout(r, 15000))]);
  const main = d.querySelector('main, article, [role=main]') || d.body, box = main.getBoundingClientRect();
  const math = [...main.querySelectorAll('.math')];
  // a table is inside the page when its right edge is, or when a box between it and the page scrolls and is
  const fits = e => e.getBoundingClientRect().right <= box.right + 1;
  const inside = t => { for (let e = t; e && e !== main; e = e.parentElement) {
      if (e === t ? fits(e) : (['auto', 'scroll'].includes(getComputedStyle(e).overflowX) && fits(e))) return true; }
    return fits(t); };
  return {url: location.href, title: d.title, text: main ? main.innerText.trim().length : 0,
    refresh: refresh ? new URL(refresh.content.replace(/^[^;]*;\s*url=/i, ''), location.href).href : null,
    images: imgs.map(i => { const b = i.getBoundingClientRect();
      return {src: i.getAttribute('src'), nw: i.naturalWidth, nh: i.naturalHeight, w: b.width, h: b.height,
              shown: i.offsetParent !== null}; }),
    links: [...d.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...d.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    tables: main.querySelectorAll('table').length,
    wide: [...main.querySelectorAll('table')].filter(t => !inside(t)).map(t => t.innerText.slice(0, 60)),
    paragraphs: [...main.querySelectorAll('p')].map(p => p.innerText).filter(t => t.includes('|')),
    math: math.length, typeset: main.querySelectorAll('mjx-container').length,
    raw_math: math.filter(m => !m.querySelector('mjx-container')).map(m => m.innerText.slice(0, 60))};
})()"""

CONTROL_PAGE = """<!doctype html><meta charset="utf-8"><title>control</title><main style="width:800px"><p>control page</p>
<img src="GOOD"><img src="_images/no-such-figure.png">
<a href="no-such-page.html">x</a><a href="GOODPAGE#no-such-anchor">y</a><a href="GOODPAGE">z</a>
<p>| a | b |<br>|:–|–:|<br>| 1 | 2 |</p>
<table style="width:3000px"><tr><td>a table wider than the page</td></tr></table>
<span class="math notranslate nohighlight">\\(w = 1/GD\\)</span></main>"""


class _Handler(SimpleHTTPRequestHandler):
    served: dict = {}
    def log_message(self, *a): pass
    def do_GET(self):
        body = self.served.get(self.path.lstrip('/'))
        if body is None: return super().do_GET()
        self.send_response(200)
        self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.end_headers()
        self.wfile.write(body.encode())


class Browser:
    "One headless Chromium driven over the DevTools protocol (websocket-client)."
    def __init__(self, chromium, tmp: Path):
        flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
                 '--disable-background-networking', '--disable-component-update', '--disable-extensions',
                 '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',   # nothing leaves the machine (a CDN)
                 '--remote-debugging-port=0', '--remote-allow-origins=*', f'--user-data-dir={tmp}',
                 '--window-size=1280,1800', 'about:blank']
        self.proc = subprocess.Popen([chromium, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)   # its own process group: the renderers go with it
        port_file, t0 = tmp/'DevToolsActivePort', time.time()
        while not (port_file.is_file() and port_file.read_text().count('\n') >= 1):
            assert time.time() - t0 < 60 and self.proc.poll() is None, 'chromium did not start its DevTools endpoint'
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urlopen(f'http://127.0.0.1:{port}/json/list', timeout=30).read())
        import websocket
        self.ws = websocket.create_connection(next(t for t in targets if t['type'] == 'page')['webSocketDebuggerUrl'],
                                              timeout=120, suppress_origin=True)
        self.n, self.events = 0, []
        self.call('Page.enable')

    def call(self, method, **params):
        "Send one command; return its result (events that arrive meanwhile are kept in self.events)."
        self.n += 1
        self.ws.send(json.dumps(dict(id=self.n, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.n:
                assert 'error' not in msg, (method, msg['error'])
                return msg['result']
            self.events.append(msg.get('method'))

    def open(self, url):
        "Load `url` and wait for its load event."
        self.events.clear()
        self.call('Page.navigate', url=url)
        self.loaded()

    def loaded(self):
        "Wait for the next load event (one may have arrived already)."
        while 'Page.loadEventFired' not in self.events:
            self.events.append(json.loads(self.ws.recv()).get('method'))
        self.events.clear()

    def value(self, expression):
        "The value of a JavaScript expression in the page; None while the page is between two documents."
        try: return self.call('Runtime.evaluate', expression=expression, returnByValue=True)['result'].get('value')
        except AssertionError: return None

    def settle_redirect(self, url, timeout=30):
        "After loading a page that redirects (meta refresh), wait until the target has replaced it and loaded."
        t0 = time.time()
        while not (self.value('location.href') not in (None, url) and self.value('document.readyState') == 'complete'):
            assert time.time() - t0 < timeout, f'{url} did not redirect within {timeout} s'
            time.sleep(0.1)

    def check(self) -> dict:
        "Run CHECK in the page."
        return self.call('Runtime.evaluate', expression=CHECK, awaitPromise=True, returnByValue=True)['result']['value']

    def close(self):
        try: self.ws.close()
        finally:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def browse(html: Path, pages: list, served: dict, tmp: Path, shots: Path) -> list:
    "Open `pages` (under `html`, plus the in-memory `served` ones) in one headless Chromium; what each showed."
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if not chromium: pytest.skip("no chromium: `make test` installs Debian's package (apt-get install chromium)")
    handler = type('H', (_Handler,), dict(served=served))
    server = ThreadingHTTPServer(('127.0.0.1', 0), lambda *a, **kw: handler(*a, directory=str(html), **kw))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser, out = Browser(chromium, tmp), []
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for p in pages:
            try:
                url = f'http://127.0.0.1:{server.server_port}/{p}'
                browser.open(url)
                if (html/p).is_file() and re.search(r'<meta[^>]*http-equiv="refresh"', (html/p).read_text(), re.I):
                    browser.settle_redirect(url)              # the page it lands on is checked
                res = dict(browser.check(), page=p)
                png = browser.call('Page.captureScreenshot', format='png')['data']
                (shots/(p.replace('/', '__')[:-len('.html')] + '.png')).write_bytes(base64.b64decode(png))
            except Exception as e:   # one page's failure is reported with the others
                res = dict(page=p, error=f'{type(e).__name__}: {e}')
            out.append(res)
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
    return out


def problems(res: dict, html: Path, ids: dict, tables: int = 0) -> list:
    "What is wrong with one page as the browser showed it (`tables`: how many its source holds)."
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
    raw = [p for p in res['paragraphs'] if RAW_TABLE.search(p)]
    if raw: out.append(f'raw Markdown table shown as text: {raw[0][:60]!r}')
    if res['tables'] < tables: out.append(f"{res['tables']} <table> elements where the source has {tables} tables")
    if res['wide']: out.append(f"table runs off the page: {res['wide'][0]!r}")
    if res['raw_math']: out.append(f"math not typeset: {res['raw_math'][0]!r}")
    return out


def test_every_page_loads_renders_tables_math_and_links_and_has_a_screenshot(site, tmp_path):
    pages = pages_of(site)
    nbs = sorted(p.relative_to(ROOT).with_suffix('.html').as_posix() for d in ('nbs', 'nbs/losses', 'nbs/data', 'nbs/train', 'nbs/pipeline', 'nbs/paper')
                 for p in (ROOT / d).glob('*.ipynb') if d == 'nbs/paper' or p.name[0].isdigit())
    assert set(nbs) <= set(pages), f'notebooks without a page: {sorted(set(nbs) - set(pages))}'
    docs = {f'docs/{p.stem}.html' for p in (ROOT/'docs').glob('*.md')}
    assert {'index.html', 'README.html', 'nbs/method.html'} | docs <= set(pages), sorted(set(pages))
    good_img = next(site.glob('_images/*.png')).relative_to(site).as_posix()
    control = CONTROL_PAGE.replace('GOODPAGE', 'docs/results.html').replace('GOOD', good_img)
    shots = site.parent/'screenshots'
    seen = {r['page']: r for r in browse(site, pages + [CONTROL], {CONTROL: control}, tmp_path, shots)}
    assert set(seen) == set(pages) | {CONTROL}
    ids = {p: set(r.get('ids', [])) for p, r in seen.items()}

    # The checks bite: every fault of the control page is found, its good image and link pass.
    ctl = [p.split(':')[0] for p in problems(seen.pop(CONTROL), site, ids, tables=2)]
    assert ctl == ['image does not render', 'broken link', 'missing anchor', 'raw Markdown table shown as text',
                   '1 <table> elements where the source has 2 tables', 'table runs off the page', 'math not typeset'], ctl

    bad = {p: pr for p, r in seen.items() if (pr := problems(r, site, ids, expected_tables(p)))}
    assert not bad, 'pages with problems:\n' + '\n'.join(f'{p}: {x}' for p, prs in bad.items() for x in prs)
    # Not vacuous: the figure gallery shows every committed figure, the README's tables and the paper notebooks'
    # Markdown outputs are tables, the method page's math is typeset offline, and the README links every page.
    figs = [i for i in seen['docs/figures.html']['images'] if i['shown']]
    assert len(figs) == len(list((ROOT / 'figures').glob('*.png'))) > 0
    assert expected_tables('README.html') >= 3 and expected_tables('nbs/paper/fmnist_lt.html') >= 3
    assert seen['nbs/method.html']['typeset'] > 10 and seen['nbs/method.html']['math'] > 10
    assert all(any(l.endswith(d) for l in seen['README.html']['links']) for d in docs - {'docs/figures.html'})
    assert any('arxiv.org/abs/2204.09234' in l for l in seen['README.html']['links'])
    assert seen['index.html']['url'].endswith('/README.html')                 # the site opens on the README
    # Notebook pages read like nbdev's docs (docs/nbdev_cells.py): no `#| hide` cell, no `#| ...` directive line.
    leftovers = [p for p in nbs if '#| ' in (site / p).read_text()]
    assert not leftovers, f'nbdev directives left on {leftovers}'
    # A screenshot of every page, in the build folder.
    for p in pages:
        png = shots/(p.replace('/', '__')[:-len('.html')] + '.png')
        assert png.is_file() and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 5000, p
