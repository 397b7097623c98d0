#!/usr/bin/env python
"""Issue 25's moves: `ltpaper/` in subpackages by concept (losses/, data/, train/, pipeline/), each exported from the
matching folder of nbs/. Run from the repository root: `python tools/restructure.py` (then review, test, commit).

Re-runnable: a second run changes nothing, and a branch that still edits the old paths can be brought over by merging
it, taking its side of each moved notebook, and running this again (the import and name rewrites are regular).

What it does, in order:
1. `git mv` each library notebook into its folder (numbered inside the folder by dependency) and points its
   `#| default_exp` at the new module; writes the two new package notebooks (train/00_train, pipeline/00_pipeline);
2. rewrites every reference to a moved module or notebook in the cell sources of every notebook (outputs untouched),
   in tests/, benchmarks/, tools/, docs/, configs/ comments, the README and the Makefile: `ltpaper.binning` ->
   `ltpaper.losses.binning`, `from ltpaper import readers` -> `from ltpaper.data import readers`, imports from
   `ltpaper.train` of a name the package does not re-export -> `ltpaper.train.loop`, the notebook `04_train` ->
   `train/06_loop` (with or without nbs/ and .ipynb), the file ltpaper/train + .py -> ltpaper/train/loop + .py;
3. fixes the few places that list modules or notebooks of one flat folder (the site's table of contents, the
   packaging's package list, the tests that glob ltpaper/*.py or nbs/*.ipynb);
4. removes the flat modules from ltpaper/ and regenerates it (nbdev-export, nbdev-clean).

`python tools/restructure.py names` makes the names one module takes from another public (`RENAMES`): in the notebook
that defines each name, and in every notebook and test file that imports it from there (`from ltpaper.X import _y`,
`import ltpaper.X as A` ... `A._y`); a module's own private helper of the same name elsewhere is left alone.
(Note for later runs: `00_losses` is both an old and a new notebook name; write the new one with its folder.)
"""
import hashlib, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.executable).parent

# old notebook stem -> (new path under nbs/ without .ipynb, old module, new module)
NOTEBOOKS = {
    '00_losses':        ('losses/00_losses',     'losses',       'losses.__init__'),
    '00c_loss_base':    ('losses/01_base',       'loss_base',    'losses.base'),
    '01_binning':       ('losses/02_binning',    'binning',      'losses.binning'),
    '00d_ours':         ('losses/03_ours',       'ours',         'losses.ours'),
    '00b_study_losses': ('losses/05_study',      'study_losses', 'losses.study'),
    '00g_readings':     ('losses/06_readings',   'readings',     'losses.readings'),
    '02_data':          ('data/00_data',         'data',         'data.__init__'),
    '02a_longtail':     ('data/01_longtail',     'longtail',     'data.longtail'),
    '02b_readers':      ('data/02_readers',      'readers',      'data.readers'),
    '02c_datasets':     ('data/03_datasets',     'datasets',     'data.datasets'),
    '02d_loader':       ('data/04_loader',       'loader',       'data.loader'),
    '04b_checkpoint':   ('train/01_checkpoint',  'checkpoint',   'train.checkpoint'),
    '04c_evaluation':   ('train/02_evaluation',  'evaluation',   'train.evaluation'),
    '04d_record':       ('train/03_record',      'record',       'train.record'),
    '04e_run_data':     ('train/04_run_data',    'run_data',     'train.run_data'),
    '04f_step':         ('train/05_step',        'step',         'train.step'),
    '04_train':         ('train/06_loop',        'train',        'train.loop'),
    '04g_many':         ('train/07_many',        'many',         'train.many'),
    '05a_tables':       ('pipeline/01_tables',   'tables',       'pipeline.tables'),
    '05b_runs':         ('pipeline/02_runs',     'runs',         'pipeline.runs'),
    '05c_launch':       ('pipeline/03_launch',   'launch',       'pipeline.launch'),
    '05_reproduce':     ('pipeline/04_reproduce', 'reproduce',   'pipeline.reproduce'),
    '05d_report':       ('pipeline/05_report',   'report',       'pipeline.report'),
    '05e_figures':      ('pipeline/06_figures',  'figures',      'pipeline.figures'),
    '05f_verify':       ('pipeline/07_verify',   'verify',       'pipeline.verify'),
    '05g_budget':       ('pipeline/08_budget',   'budget',       'pipeline.budget'),
    '05h_mechanism':    ('pipeline/09_mechanism', 'mechanism',   'pipeline.mechanism'),
}
# modules whose dotted name changes (`ltpaper.losses` and `ltpaper.data` keep theirs: the packages' __init__)
MODULES = {old: new for _, old, new in NOTEBOOKS.values() if not new.endswith('__init__') and old != 'train'}
# what `ltpaper.train` (the package) re-exports: an import of only these names keeps `ltpaper.train`
TRAIN_API = ('TrainConfig', 'NonFiniteLossError', 'Run', 'eager_step', 'lr_at', 'run_dir', 'train', 'train_one_epoch')
TRAIN_SUBMODULES = ('loop', 'checkpoint', 'evaluation', 'record', 'run_data', 'step', 'many')

NEW_NOTEBOOKS = {
    'train/00_train': '''\
# %% [markdown]
# # Training
# > One training run of a `TrainConfig`: the public names of the training code, re-exported from the modules that define them.

# %%
#| default_exp train.__init__

# %% [markdown]
# The training code is split by concept into notebooks numbered by dependency: `01_checkpoint` (atomic checkpoints
# and RNG states), `02_evaluation` (accuracy by class and group), `03_record` (provenance, per-class loss weights),
# `04_run_data` (a run's datasets and loaders), `05_step` (the compiled training step), `06_loop` (`Run` and the
# epoch loop `train`) and `07_many` (several runs stepped in turn in one process). This module re-exports the names
# that `from ltpaper.train import X` has always provided.

# %%
#| export
from ltpaper.config import TrainConfig
from ltpaper.train.loop import NonFiniteLossError, Run, eager_step, lr_at, run_dir, train, train_one_epoch

_all_ = ['TrainConfig', 'NonFiniteLossError', 'Run', 'eager_step', 'lr_at', 'run_dir', 'train', 'train_one_epoch']

# %% [markdown]
# Each name is the defining module's own object:

# %%
#| hide
from fastcore.test import test_eq
import ltpaper.config, ltpaper.train.loop

# %%
test_eq([n for n in _all_ if globals()[n] is not getattr(ltpaper.train.loop, n)], [])
''',
    'pipeline/00_pipeline': '''\
# %% [markdown]
# # The reproduction pipeline
# > From a table's config to its runs, tables and figures: tables, runs, launch, reproduce, report, figures, verify, budget and mechanism.

# %%
#| default_exp pipeline.__init__

# %% [markdown]
# The pipeline reads `configs/*.yaml` and writes `results/`, `tables/` and `figures/`. Planning, launching and
# rendering load no torch (a run does, in its own kernel); `verify` and `mechanism` retrain runs. Its notebooks, numbered by dependency: `01_tables` (the table configs and their
# rows), `02_runs` (jobs, run folders, locks, status), `03_launch` (`--jobs`, `--gpus`, Slurm), `04_reproduce`
# (reproduce and render), `05_report` (tables), `06_figures`, `07_verify` (retrain and compare), `08_budget` (the
# verdict per training budget) and `09_mechanism` (what the weights did in trained runs). The package itself
# exports nothing: import the module you need, e.g. `from ltpaper.pipeline.runs import plan_jobs`.

# %%
#| hide
import os, subprocess, sys
from pathlib import Path
import ltpaper

# %%
root = Path(ltpaper.__file__).resolve().parents[1]       # this checkout's ltpaper, also in a fresh interpreter
code = "import sys, ltpaper.pipeline.runs, ltpaper.pipeline.report, ltpaper.pipeline.reproduce; print('torch' in sys.modules)"
r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
assert r.stdout.strip() == 'False', r.stdout + r.stderr    # planning runs and rendering tables load no torch
''',
}

# the names one module uses from another, made public: {defining module: {old: new}}
RENAMES = {
    'losses.base': dict(_as_counts='as_counts', _check='check_hparam', _check_num='check_num', _check_size='check_size'),
    'config': dict(_need='need', _jsonable='jsonable'),
    'data.readers': dict(_CIFAR='CIFAR_FILES', _cifar_reader='cifar_reader', _cifar_verify='cifar_verify', _download_cifar='download_cifar',
                         _download_fmnist='download_fmnist', _download_tiny='download_tiny', _fmnist_candidates='fmnist_candidates',
                         _fmnist_missing='fmnist_missing', _fmnist_verify='fmnist_verify', _imagenet_lt_files='imagenet_lt_files',
                         _imagenet_train_dir='imagenet_train_dir', _inat_dirs='inat_dirs', _one_line='first_line',
                         _read_fmnist='read_fmnist', _read_imagenet_folder='read_imagenet_folder', _read_imagenet_lt='read_imagenet_lt',
                         _read_inat='read_inat', _read_tiny='read_tiny', _tiny_verify='tiny_verify'),
    'data.datasets': dict(_locate='locate', _fetch='fetch_verified'),
    'cli_args': dict(_ArgError='ArgError', _Parser='Parser', _error='cli_error', _field_argument='field_argument'),
    'pipeline.tables': dict(_configs_root='configs_folder', _fmt_if='format_if'),
    'pipeline.report': dict(_label='row_label'),
    'pipeline.runs': dict(_kernel_env='kernel_env', _ipc_kernel_manager='ipc_kernel_manager', _one_line='one_line'),
    'train.loop': dict(_device_of='run_device'),
    'train.record': dict(_now='utc_now', _provenance='provenance'),
    'train.run_data': dict(_build_data='build_data'),
}

SKIP_PARTS = ('results', 'tables', 'figures', 'ltpaper')   # generated or measured files: never rewritten


def git(*args, check=True):
    return subprocess.run(['git', *args], cwd=ROOT, check=check, capture_output=True, text=True).stdout


# ------------------------------------------------------------------------------------------------ the rewrites
def _names(spec: str) -> list:
    "The imported names of `a, b as c, (d,\n e)`."
    spec = re.sub(r'#[^\n]*', '', spec).replace('(', ' ').replace(')', ' ').replace('\\\n', ' ')
    return [n.split(' as ')[0].strip() for n in spec.split(',') if n.strip()]

def _train_import(m):
    names = _names(m.group(1))
    return m.group(0) if all(n in TRAIN_API for n in names) else m.group(0).replace('from ltpaper.train import', 'from ltpaper.train.loop import', 1)

def _from_ltpaper(m):
    old, rest = m.group(1), m.group(2) or ''
    if old in MODULES:
        pkg, new = MODULES[old].split('.')
        return f'from ltpaper.{pkg} import {new}{rest}'
    return m.group(0)

def _path(m):
    old = m.group(1)
    new = {'losses': 'losses/__init__', 'data': 'data/__init__', 'train': 'train/loop'}.get(old) or MODULES.get(old)
    return f"ltpaper/{new.replace('.', '/')}.py" if new else m.group(0)

_MOD_RE = re.compile(r'(?<![\w.])ltpaper\.(' + '|'.join(sorted(MODULES, key=len, reverse=True)) + r')\b')
_NB_RE = re.compile(r'(?<!\w)nbs/(' + '|'.join(sorted(NOTEBOOKS, key=len, reverse=True)) + r')\b')
_BARE_NB_RE = re.compile(r'(?<![\w/])(' + '|'.join(sorted(NOTEBOOKS, key=len, reverse=True)) + r')\b')

def rewrite(text: str) -> str:
    "Every reference to a moved module or notebook in `text`, pointed at its new place."
    text = re.sub(r'from ltpaper\.train import (\([^()]*\)|[^\n;"\']*)', _train_import, text)
    text = re.sub(r'import ltpaper\.train as ', 'import ltpaper.train.loop as ', text)
    text = re.sub(r'(?<![\w.])ltpaper\.train\.(\w+)',
                  lambda m: m.group(0) if m.group(1) in TRAIN_API + TRAIN_SUBMODULES else f'ltpaper.train.loop.{m.group(1)}', text)
    text = re.sub(r'from ltpaper import (\w+)( as \w+)?', _from_ltpaper, text)
    text = _MOD_RE.sub(lambda m: 'ltpaper.' + MODULES[m.group(1)], text)
    text = re.sub(r'(?<![\w.])ltpaper/(\w+)\.py\b', _path, text)
    text = _NB_RE.sub(lambda m: 'nbs/' + NOTEBOOKS[m.group(1)][0], text)
    return _BARE_NB_RE.sub(lambda m: NOTEBOOKS[m.group(1)][0], text)

def default_exp(text: str) -> str:
    "`#| default_exp OLD` of a moved notebook -> the new module."
    olds = {old: new for _, old, new in NOTEBOOKS.values()}
    return re.sub(r'^(#\|\s*default_exp\s+)(\w+)\s*$', lambda m: m.group(1) + olds.get(m.group(2), m.group(2)), text, flags=re.M)


# ------------------------------------------------------------------------------------------------ the steps
def move_notebooks():
    for old, (new, _, _) in NOTEBOOKS.items():
        src, dst = ROOT/'nbs'/f'{old}.ipynb', ROOT/'nbs'/f'{new}.ipynb'
        if src.exists() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            git('mv', str(src.relative_to(ROOT)), str(dst.relative_to(ROOT)))

def write_new_notebooks():
    for new, text in NEW_NOTEBOOKS.items():
        dst = ROOT/'nbs'/f'{new}.ipynb'
        if dst.exists(): continue
        py = Path('/tmp')/f'restructure_{dst.stem}.py'
        py.write_text(text)
        subprocess.run([str(BIN/'jupytext'), '--quiet', '--to', 'ipynb', str(py), '-o', str(dst)], check=True)
        nb = json.loads(dst.read_text())
        for i, c in enumerate(nb['cells']):   # ids from the notebook's name and the cell's place: the same on every run
            c['id'] = hashlib.sha256(f'{new}#{i}'.encode()).hexdigest()[:8]
        nb['metadata'] = {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}
        dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
        git('add', str(dst.relative_to(ROOT)))

def rewrite_notebook(path: Path):
    nb = json.loads(path.read_text())
    changed = False
    for c in nb['cells']:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        new = default_exp(rewrite(src))
        if new != src:
            c['source'] = new.splitlines(keepends=True)
            changed = True
    if changed: path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def rewrite_files():
    me = Path(__file__).resolve()
    for rel in git('ls-files').splitlines():
        p = ROOT/rel
        measured = rel.startswith('benchmarks/results/') and p.suffix != '.md'   # logs and JSON as measured; reports name notebooks
        if p.resolve() == me or rel.split('/')[0] in SKIP_PARTS or measured or not p.is_file(): continue
        if p.suffix == '.ipynb':
            rewrite_notebook(p)
            continue
        try: text = p.read_text()
        except UnicodeDecodeError: continue
        new = rewrite(text)
        if new != text: p.write_text(new)

FIXUPS = [   # (file, old, new): the places that list modules or notebooks of one flat folder
    ('docs/_toc.yml', "      - glob: nbs/0*\n",
     "      - glob: nbs/0*\n      - glob: nbs/losses/*\n      - glob: nbs/data/*\n      - glob: nbs/train/*\n"
     "      - glob: nbs/pipeline/*\n"),
    ('pyproject.toml', 'include = ["ltpaper"]', 'include = ["ltpaper", "ltpaper.*"]'),
    ('tests/test_bad_input.py', "SOURCES = sorted((ROOT/'ltpaper').glob('*.py'))", "SOURCES = sorted((ROOT/'ltpaper').rglob('*.py'))"),
    ('tests/test_bad_input.py', "(ROOT/'ltpaper'/'tables.py')", "(ROOT/'ltpaper'/'pipeline'/'tables.py')"),
    ('tests/test_bad_input.py', "(ROOT/'ltpaper'/'runs.py').read_text() + (ROOT/'ltpaper'/'launch.py').read_text()",
     "(ROOT/'ltpaper'/'pipeline'/'runs.py').read_text() + (ROOT/'ltpaper'/'pipeline'/'launch.py').read_text()"),
    ('tests/test_bad_input.py', "or p.name == 'data.py', p.name   # data.py unpickles", "or p.name == 'readers.py', p.name   # readers.py unpickles"),
    ('tests/test_docs.py', "for d in ('nbs', 'nbs/paper')", "for d in ('nbs', 'nbs/losses', 'nbs/data', 'nbs/train', 'nbs/pipeline', 'nbs/paper')"),
    ('tests/test_docs.py', "if d != 'nbs' or p.name[0].isdigit())", "if d == 'nbs/paper' or p.name[0].isdigit())"),
    ('tests/test_imports.py', "MODULES = sorted(m.name for m in pkgutil.iter_modules([str(ROOT / 'ltpaper')]) if not m.name.startswith('_'))",
     "MODULES = sorted(m.name.removeprefix('ltpaper.') for m in pkgutil.walk_packages([str(ROOT / 'ltpaper')], 'ltpaper.')\n"
     "                 if not m.name.rsplit('.', 1)[-1].startswith('_'))"),
    ('tests/test_imports.py', "assert {'losses', 'binning', 'settings'} <= set(MODULES)",
     "assert {'losses', 'losses.binning', 'data.readers', 'train.loop', 'pipeline.runs', 'settings'} <= set(MODULES)"),
]

def fixups():
    for rel, old, new in FIXUPS:
        p = ROOT/rel
        text = p.read_text()
        if new not in text: p.write_text(text.replace(old, new))

def regenerate():
    for _, old, _ in NOTEBOOKS.values():
        p = ROOT/'ltpaper'/f'{old}.py'
        if p.exists(): git('rm', '-q', str(p.relative_to(ROOT)))
    subprocess.run([str(BIN/'nbdev-export')], cwd=ROOT, check=True)
    subprocess.run([str(BIN/'nbdev-clean')], cwd=ROOT, check=True)
    git('add', '-A', 'ltpaper', 'nbs')


# ------------------------------------------------------------------------------------------------ public names
def _source(p: Path) -> str:
    if p.suffix != '.ipynb': return p.read_text()
    return '\n'.join(''.join(c['source']) for c in json.loads(p.read_text())['cells'])

def _defines(p: Path, mod: str) -> bool:
    return p.suffix == '.ipynb' and re.search(rf'^#\|\s*default_exp\s+{re.escape(mod)}\s*$', _source(p), re.M) is not None

def _aliases(text: str, mod: str) -> set:
    "Names under which `text` binds module ltpaper.<mod> (`import ltpaper.a.b as X`, `from ltpaper.a import b as X`)."
    pkg, _, leaf = ('ltpaper.' + mod).rpartition('.')
    found = re.findall(rf'import ltpaper\.{re.escape(mod)} as (\w+)', text)
    found += re.findall(rf'from {re.escape(pkg)} import {re.escape(leaf)} as (\w+)', text)
    return set(found)

def _imports_name(text: str, mod: str, old: str) -> bool:
    for m in re.finditer(rf'from ltpaper\.{re.escape(mod)} import (\([^()]*\)|[^\n]*)', text):
        if old in _names(m.group(1)): return True
    return False

def rename_in(text: str, mod: str, renames: dict, whole: bool) -> str:
    "Renames of `mod`'s names in `text`: every occurrence (`whole`: the defining notebook or an importer), else `A._y` only."
    for old, new in renames.items():
        if whole or _imports_name(text, mod, old): text = re.sub(rf'(?<![\w.]){re.escape(old)}\b', new, text)
        for a in _aliases(text, mod): text = re.sub(rf'\b{re.escape(a)}\.{re.escape(old)}\b', f'{a}.{new}', text)
    return text

def public_names():
    for rel in git('ls-files', 'nbs', 'tests', 'benchmarks', 'tools').splitlines():
        p = ROOT/rel
        if p.resolve() == Path(__file__).resolve() or p.suffix not in ('.ipynb', '.py'): continue
        nb = json.loads(p.read_text()) if p.suffix == '.ipynb' else None
        parts = [''.join(c['source']) for c in nb['cells']] if nb else [p.read_text()]
        whole_file = _source(p)
        for mod, renames in RENAMES.items():
            defining = _defines(p, mod)
            importing = {old for old, new in renames.items()          # the new name too: a merge may bring old uses back
                         if _imports_name(whole_file, mod, old) or _imports_name(whole_file, mod, new)}
            parts = [rename_in(t, mod, {o: n for o, n in renames.items() if defining or o in importing}, True)
                     if (defining or importing) else rename_in(t, mod, renames, False) for t in parts]
        if nb:
            for c, t in zip(nb['cells'], parts):
                if ''.join(c['source']) != t: c['source'] = t.splitlines(keepends=True)
            new = json.dumps(nb, indent=1, ensure_ascii=False) + '\n'
        else: new = parts[0]
        if new != p.read_text(): p.write_text(new)
    subprocess.run([str(BIN/'nbdev-export')], cwd=ROOT, check=True)
    subprocess.run([str(BIN/'nbdev-clean')], cwd=ROOT, check=True)


if __name__ == '__main__' and sys.argv[1:2] == ['names']:
    BIN = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(sys.executable).parent
    public_names()
    print(git('status', '--short', '--', '.') or 'nothing changed')
elif __name__ == '__main__':
    move_notebooks()
    rewrite_files()
    write_new_notebooks()
    fixups()
    regenerate()
    print(git('status', '--short', '--', '.') or 'nothing changed')
