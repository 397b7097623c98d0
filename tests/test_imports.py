"""Every ltpaper module imports in a fresh interpreter (a hidden notebook cell can mask a missing import), and the import
graph of the package, read from the source, runs one way: no module imports, directly or through others, one that
imports it (the loss registry imports the loss modules; no loss module imports the registry back), and every import
points down the house that docs/contributing.md draws (LAYERS) or stays inside its package. What one module
takes from another is public: a private name (`from ltpaper.x import _y`, relative or not, inside functions too) may
cross a module boundary only when it is listed in PRIVATE_IMPORTS below with its reason, and at most 5 may."""
import ast, json, os, pkgutil, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name.removeprefix('ltpaper.') for m in pkgutil.walk_packages([str(ROOT / 'ltpaper')], 'ltpaper.')
                 if not m.name.rsplit('.', 1)[-1].startswith('_'))

def test_modules_found():
    assert {'losses', 'losses.binning', 'data.readers', 'train.loop', 'pipeline.runs', 'settings'} <= set(MODULES)

# One interpreter imports the heavy third-party libraries once (none of ltpaper), then forks one child per module, which
# imports that module first: a name a module uses without importing it fails there as it would in a new interpreter
# (module globals are per module; a library already in sys.modules does not bind a name), at a tenth of the cost of
# 39 interpreters that each import torch.
FORK_IMPORTS = """
import importlib, json, os, sys, traceback
for lib in ('torch', 'torchvision', 'numpy', 'pandas', 'matplotlib.pyplot', 'yaml'):
    try: importlib.import_module(lib)
    except ImportError: pass
assert not [m for m in sys.modules if m.split('.')[0] == 'ltpaper'], 'the server imported ltpaper itself'
failed = {}
for mod in sys.argv[1:]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try: importlib.import_module('ltpaper.' + mod); code = 0
        except BaseException: os.write(w, traceback.format_exc()[-2000:].encode()); code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f: err = f.read()
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0: failed[mod] = err or 'the child died'
print(json.dumps(failed))
"""

def fresh_imports(mods) -> dict:
    "{module: traceback} of the modules that fail to import first in a fresh process (empty: all import)."
    r = subprocess.run([sys.executable, '-c', FORK_IMPORTS, *mods], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])

def test_fresh_import_of_every_module():
    assert fresh_imports(MODULES) == {}

def test_fresh_import_catches_a_missing_import(tmp_path):
    "A module that uses a name it never imported (torch is already loaded in the server) fails, named; the others pass."
    pkg = tmp_path/'ltpaper'
    shutil.copytree(ROOT/'ltpaper', pkg, ignore=shutil.ignore_patterns('__pycache__'))
    (pkg/'planted.py').write_text('x = torch.zeros(1)\n')
    r = subprocess.run([sys.executable, '-c', FORK_IMPORTS, 'planted', 'settings'], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, 'PYTHONPATH': str(tmp_path)})
    failed = json.loads(r.stdout.splitlines()[-1])
    assert list(failed) == ['planted'] and "NameError: name 'torch' is not defined" in failed['planted'], r.stdout + r.stderr


# ------------------------------------------------------------------------------------------ the import graph
def module_files(root=ROOT/'ltpaper') -> dict:
    "{dotted module name: file} of a package folder (a package's __init__.py is the package)."
    out = {}
    for p in sorted(root.rglob('*.py')):
        parts = list(p.relative_to(root.parent).with_suffix('').parts)
        if parts[-1] == '__init__': parts.pop()
        out['.'.join(parts)] = p
    return out

def imports_of(name: str, path: Path, modules) -> list:
    "(imported module, imported name or None) for every import statement of one module, those inside functions too."
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
            target = '.'.join(base + ([node.module] if node.module else []))
            for a in node.names:      # `from . import study` imports a module; `from .base import LTLoss` a name
                sub = f'{target}.{a.name}'
                out.append((sub, None) if sub in modules else (target, a.name))
    return [(m, n) for m, n in out if m == 'ltpaper' or m.startswith('ltpaper.')]

def import_graph(root=ROOT/'ltpaper') -> tuple[dict, list]:
    "({module: set of ltpaper modules it imports}, [(importer, module, private name)])."
    files = module_files(root)
    graph, private = {}, []
    for name, path in files.items():
        found = imports_of(name, path, files)
        graph[name] = {m for m, _ in found if m != name}
        private += [(name, m, n) for m, n in found if n and n.startswith('_') and not n.startswith('__')]
    return graph, private

def find_cycle(graph: dict) -> list:
    "One import cycle as [a, b, ..., a], or [] when the graph runs one way."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 'open': return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)): return c
        state[m] = 'done'
        stack.pop()
        return []
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return []

GRAPH, PRIVATE = import_graph()

# (importer, module, private name): why it crosses. None today: every name one module uses from another is public.
PRIVATE_IMPORTS = {}

def test_graph_covers_the_package():
    assert {'ltpaper.losses.registry', 'ltpaper.losses.study', 'ltpaper.train.loop', 'ltpaper.cli'} <= set(GRAPH)
    assert 'ltpaper.losses.study' in GRAPH['ltpaper.losses.registry']          # the registry imports the loss modules
    assert 'ltpaper.losses.registry' in GRAPH['ltpaper.losses']                 # the package re-exports it
    assert 'ltpaper.data' in GRAPH['ltpaper.config']                            # imports inside functions count

def test_no_import_cycle():
    assert find_cycle(GRAPH) == [], f"import cycle: {' -> '.join(find_cycle(GRAPH))}"

def test_no_loss_module_imports_the_registry():
    back = sorted(m for m, deps in GRAPH.items() if m.startswith('ltpaper.losses.') and m != 'ltpaper.losses.registry'
                  and deps & {'ltpaper.losses', 'ltpaper.losses.registry'})
    assert back == [], f'these loss modules import the registry (or the package that re-exports it): {back}'

# the house, top to bottom (docs/contributing.md, Layout): an import points down this list, or stays inside its group
LAYERS = [('ltpaper.cli',), ('ltpaper.pipeline',), ('ltpaper.train',), ('ltpaper.config',),
          ('ltpaper.losses', 'ltpaper.data', 'ltpaper.models'),
          ('ltpaper.settings', 'ltpaper.numerics', 'ltpaper.distributed', 'ltpaper.files', 'ltpaper')]

def group_of(m: str) -> str:
    "The group of LAYERS a module belongs to (cli_args is the cli's; a package's modules are the package's)."
    m = 'ltpaper.cli' if m == 'ltpaper.cli_args' else m
    return max((g for gs in LAYERS for g in gs if m == g or m.startswith(g + '.')), key=len, default='')

def layer_of(m: str) -> int: return next(i for i, gs in enumerate(LAYERS) if group_of(m) in gs)

def test_every_module_has_its_place_in_the_house():
    assert [m for m in GRAPH if not group_of(m)] == []

def pointing_up(graph: dict) -> list:
    "(importer, imported) of every import that points up or sideways in LAYERS."
    return sorted((m, d) for m, deps in graph.items() for d in deps if group_of(d) != group_of(m) and layer_of(d) <= layer_of(m))

def test_every_import_points_down():
    assert pointing_up(GRAPH) == [], f"imports that point up or sideways in the house (LAYERS): {pointing_up(GRAPH)}"

def test_lines_of_ltpaper_at_most_140():
    long = [f'{p.relative_to(ROOT)}:{i}' for p in (ROOT/'ltpaper').rglob('*.py') if p.name != '_modidx.py'
            for i, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 140]
    assert long == [], f'lines over 140 characters (wrap them in the notebook): {long[:10]}'

def test_private_imports_are_few_and_listed():
    unlisted = sorted(set(PRIVATE) - set(PRIVATE_IMPORTS))
    assert unlisted == [], f"private names imported across modules (make them public, or list them with a reason): {unlisted}"
    assert len(PRIVATE) <= 5 and all(PRIVATE_IMPORTS.values())

def test_the_checks_bite(tmp_path):
    "A planted cycle, private import and upward import are found (the graph is read from files, so plant files)."
    pkg = tmp_path/'ltpaper'
    (pkg/'losses').mkdir(parents=True)
    (pkg/'__init__.py').write_text('')
    (pkg/'losses'/'__init__.py').write_text('from .registry import LOSSES\n')
    (pkg/'losses'/'registry.py').write_text('from . import study\nLOSSES = {}\n')
    (pkg/'losses'/'study.py').write_text('def f():\n    from ltpaper.losses import LOSSES\n    from .base import _check\n')
    (pkg/'losses'/'base.py').write_text('def _check(): pass\ndef f():\n    import ltpaper.pipeline.runs\n')
    graph, private = import_graph(pkg)
    assert find_cycle(graph) == ['ltpaper.losses', 'ltpaper.losses.registry', 'ltpaper.losses.study', 'ltpaper.losses']
    assert private == [('ltpaper.losses.study', 'ltpaper.losses.base', '_check')]
    assert pointing_up(graph) == [('ltpaper.losses.base', 'ltpaper.pipeline.runs')]


# ------------------------------------------------------------------------------------------ torch's private API
# Every name ltpaper takes from torch's private API, where and why. A torch that renames or drops one fails here, by
# name, before a compiled run or train_many fails obscurely; a new use must be listed (with its reason) to pass.
TORCH_INTERNALS = {
    'torch._dynamo.mark_static_address': (['ltpaper/train/step.py'], "the compiled step's counters, learning rate and "
                                          "optimizer state keep their addresses (no recompile, no CUDA-graph copy)"),
    'torch._dynamo.reset': (['ltpaper/train/step.py'], "a new compiled step starts from empty caches: graphs of earlier "
                            "runs would count against the recompile limit, a hard error under fullgraph"),
    'torch._dynamo.config.patch': (['ltpaper/train/many.py', 'ltpaper/train/step.py'], "dynamo traces torch.autograd.grad "
                                   "into the step's graph; train_many raises the recompile limit for its runs"),
    'torch._dynamo.config.recompile_limit': (['ltpaper/train/many.py'], 'the limit train_many raises (a graph per loss)'),
    'torch._foreach_mul_': (['ltpaper/train/step.py'], 'gradient clipping as clip_grad_norm_ does it, in one fused call'),
    'torch._inductor.cudagraph_trees': (['ltpaper/train/many.py'], "train_many installs each run's own CUDA-graph trees "
                                        "for its turn (inductor keeps one per thread and device)"),
}

def torch_internals(root=ROOT/'ltpaper') -> dict:
    "{private torch name: files using it} read from the source (`torch._x.y` and `from torch._x import y`)."
    out = {}
    for p in sorted(root.rglob('*.py')):
        if p.name == '_modidx.py': continue
        text = p.read_text()
        names = {f'{m[1]}.{m[2]}' for m in re.finditer(r'from (torch(?:\.\w+)*\._\w+(?:\.\w+)*) import (\w+)', text)}
        names |= {m[0] for m in re.finditer(r"(?<!from )\btorch\._[a-z][\w.]*\w", text)}
        for n in names: out.setdefault(n, set()).add(p.relative_to(root.parent).as_posix())
    return out

def test_torch_internals_are_listed_with_their_reason():
    assert {n: sorted(f) for n, f in torch_internals().items()} == {n: f for n, (f, _) in TORCH_INTERNALS.items()}

def test_torch_internals_exist_in_this_torch():
    import importlib, torch
    from torch._inductor import cudagraph_trees as cgt
    for name in TORCH_INTERNALS:
        try: obj = importlib.import_module(name)
        except ImportError:
            mod, attr = name.rsplit('.', 1)
            obj = getattr(importlib.import_module(mod), attr, None)
        if name.endswith('recompile_limit'): assert isinstance(obj, int), f'{name} is {obj!r}'
        assert obj is not None, f'torch {torch.__version__} has no {name} ({TORCH_INTERNALS[name][1]})'
    assert isinstance(cgt.get_obj(cgt.local, 'tree_manager_containers'), dict)   # the dict train_many swaps

def test_torch_internals_check_bites(tmp_path):
    (tmp_path/'m.py').write_text('import torch\nfrom torch._C import _get_tracing_state\ntorch._assert(True, "")\n')
    assert torch_internals(tmp_path) == {'torch._C._get_tracing_state': {f'{tmp_path.name}/m.py'},
                                         'torch._assert': {f'{tmp_path.name}/m.py'}}
