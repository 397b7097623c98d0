"""Bad inputs are refused with a one-line error that names the problem, before any work is done or any file is lost:
the loss API (the cases nbs/losses/07_registry.ipynb does not check), TrainConfig, the `ltpaper` CLI (in-process and one
real process), the data loaders (damaged files written here in the real IDX format), the experiment notebook's
papermill parameters; plus source checks (torch.load with weights_only=True, no eval/exec, yaml.safe_load only)."""
import gzip, json, re, subprocess, sys
from pathlib import Path

import pytest
import torch

import ltpaper.pipeline.reproduce as R
import ltpaper.pipeline.runs as RUNS
from ltpaper import data as D
from ltpaper.data import readers as DR
from ltpaper.cli import main
from ltpaper.config import TrainConfig, check_notebook_parameters
from ltpaper.losses import build_loss
from ltpaper.pipeline.runs import plan_jobs, run_job

from helpers import write_fmnist

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CC = [100, 50, 10]


def one_line(msg: str, *names):
    msg = str(msg).rstrip('\n')
    assert msg and '\n' not in msg, f'not one line: {msg!r}'
    for n in names: assert n in msg, f'{n!r} not named in {msg!r}'


# ---------------------------------------------------------------- loss API
# nbs/losses/07_registry.ipynb ("Bad input" and the build_loss cells) checks an unknown loss, a misspelt or wrong-typed
# hyperparameter, bins=0, an unknown binning or estimator, a negative gamma or momentum, negative or 2-D class_counts,
# logits whose classes disagree with class_counts, 3-D logits, a target out of range, of another batch size or of
# floats. Only the cases it leaves out are here.
def _fwd(loss, logits, target, **kw): return lambda: build_loss(loss, CC)(logits, target, **kw)

LOSS_CASES = {
    'empty-class-counts':  (lambda: build_loss('softmax', []), 'class_counts'),
    'logits-1d':           (_fwd('softmax', torch.randn(4), torch.tensor([0, 1, 2, 0])), 'logits'),
}

@pytest.mark.parametrize('case', list(LOSS_CASES))
def test_loss_api(case):
    f, name = LOSS_CASES[case]
    with pytest.raises(ValueError) as ei: f()
    one_line(ei.value, name)


# ---------------------------------------------------------------- TrainConfig (test_train.py covers the range checks of every field)
CONFIG_CASES = {
    'loss-param-wrong-type': (dict(loss='focal', loss_params={'gamma': 'high'}), 'TrainConfig.loss_params='),
    'loss-params-not-dict':  (dict(loss_params=[1]), 'TrainConfig.loss_params='),
    'milestones-a-string':   (dict(milestones='160', lr_decay=[0.1]), 'TrainConfig.milestones='),
    'limit-test-fraction':   (dict(limit_test=1.5), 'TrainConfig.limit_test='),
    'negative-seed':         (dict(seed=-1), 'TrainConfig.seed='),
    'nan-lr':                (dict(lr=float('nan')), 'TrainConfig.lr='),
}

@pytest.mark.parametrize('case', list(CONFIG_CASES))
def test_train_config(case):
    kw, name = CONFIG_CASES[case]
    with pytest.raises(ValueError) as ei: TrainConfig(**kw)
    one_line(ei.value, name)
    assert str(ei.value).startswith(name)


# ---------------------------------------------------------------- CLI: `ltpaper SUBCOMMAND` through ltpaper.cli.main
@pytest.fixture
def results(tmp_path):
    "An existing results folder with a finished run in it: a refused command must leave it byte for byte."
    rr = tmp_path/'results'
    job = plan_jobs('fmnist_lt', 'smoke', rows='softmax-if100', seeds=[0], results_root=rr)[0]
    RUNS.fake_metrics(job)
    snap = lambda: {p: p.read_bytes() for p in rr.rglob('*') if p.is_file()}
    return rr, snap, snap()

TRAIN = ['train', '--dataset', 'fmnist_lt', '--epochs', '1', '--limit-train', '100', '--limit-test', '50']
CLI_CASES = {
    'unknown-command':        (['frobnicate'], 'unknown command', 2),
    'reproduce-jobs-0':       (['reproduce', 'fmnist_lt', '--jobs', '0', '--no-render'], '--jobs 0', 2),
    'reproduce-jobs-not-int': (['reproduce', 'fmnist_lt', '--jobs', 'two'], '--jobs', 2),
    'reproduce-bad-seed':     (['reproduce', 'fmnist_lt', '--seeds', '-1'], '--seeds', 2),
    'status-unknown-table':   (['status', 'table9'], "'table9'", 2),
    'fetch-unknown-dataset':  (['fetch', 'mnist'], "'mnist'", 2),
    'train-loss-param-type':  (TRAIN + ['--loss', 'focal', '--loss-params', '{"gamma": "high"}'], 'loss_params', 2),
    'train-loss-params-list': (TRAIN + ['--loss-params', '[0.5]'], 'JSON object', 2),
    'train-negative-if':      (TRAIN + ['--imbalance-factor', '-3'], 'imbalance_factor', 2),
    'train-batch-not-int':    (TRAIN + ['--batch-size', '12.5'], '12.5', 2),
    'train-threads-negative': (TRAIN + ['--threads', '-1'], 'threads', 2),
}

@pytest.mark.parametrize('case', list(CLI_CASES))
def test_cli(case, results, capsys, monkeypatch):
    argv, name, code = CLI_CASES[case]
    rr, snap, before = results
    monkeypatch.setattr(R, 'execute_jobs', lambda *a, **k: pytest.fail('nothing may run on bad arguments'))
    extra = ['--results-root', str(rr)] if argv[0] in ('reproduce', 'status') else ['--out-dir', str(rr/'new')] if argv[0] == 'train' else []
    assert main(argv + extra) == code
    out, err = capsys.readouterr()
    one_line(err, name)
    assert out == '' and snap() == before and not (rr/'new').exists()

def test_cli_real_process_reproduce_jobs_0(results):
    "`python -m ltpaper.cli reproduce fmnist_lt --jobs 0`: exit 2, one stderr line, nothing on stdout, results unchanged."
    rr, snap, before = results
    p = subprocess.run([sys.executable, '-m', 'ltpaper.cli', 'reproduce', 'fmnist_lt', '--jobs', '0', '--results-root', str(rr)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120, env={'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'})
    assert p.returncode == 2 and p.stdout == '', p.stderr
    one_line(p.stderr, '--jobs 0', 'ltpaper reproduce: error:')
    assert snap() == before


# ---------------------------------------------------------------- data loaders
@pytest.fixture
def fm_root(tmp_path, monkeypatch):
    "A tiny Fashion-MNIST in ROOT/FashionMNIST/raw (real IDX .gz files), Debian's copy hidden."
    monkeypatch.setattr(DR, 'DEBIAN_FMNIST', tmp_path/'no-debian-package')
    write_fmnist(tmp_path/'FashionMNIST'/'raw', per_class=8, test_per_class=2)
    return tmp_path

def _truncate(p: Path):
    b = gzip.decompress(p.read_bytes()); p.write_bytes(gzip.compress(b[:len(b) // 2]))

def _fewer_labels(p: Path):   # a labels file that holds 5 labels fewer than the images file has images
    b = gzip.decompress(p.read_bytes()); n = int.from_bytes(b[4:8], 'big') - 5
    p.write_bytes(gzip.compress(b[:4] + n.to_bytes(4, 'big') + b[8:8 + n]))

def _raw(root): return root/'FashionMNIST'/'raw'

DATA_CASES = {
    'unknown-dataset':       (lambda r: D.build_dataset('mnist', root=r), "'mnist'", ValueError),
    'imbalance-factor-str':  (lambda r: D.build_dataset('fmnist_lt', root=r, imbalance_factor='100'), 'imbalance_factor', ValueError),
    'imbalance-factor-0.5':  (lambda r: D.build_dataset('fmnist_lt', root=r, imbalance_factor=0.5), 'imbalance_factor', ValueError),
    'unknown-split':         (lambda r: D.build_dataset('fmnist_lt', root=r, split='dev'), "'dev'", ValueError),
    'val-without-reserve':   (lambda r: D.build_dataset('fmnist_lt', root=r, split='val'), 'val_per_class', ValueError),
    'val-per-class-neg':     (lambda r: D.build_dataset('fmnist_lt', root=r, val_per_class=-1), 'val_per_class', ValueError),
    'val-per-class-too-big': (lambda r: D.build_dataset('fmnist_lt', root=r, val_per_class=8), 'val_per_class', ValueError),
    'missing-images-file':   (lambda r: ((_raw(r)/'train-images-idx3-ubyte.gz').unlink(), D.build_dataset('fmnist_lt', root=r)), 'fmnist_lt', FileNotFoundError),
    'truncated-images-file': (lambda r: (_truncate(_raw(r)/'train-images-idx3-ubyte.gz'), D.build_dataset('fmnist_lt', root=r)), 'train-images-idx3-ubyte', ValueError),
    'labels-disagree':       (lambda r: (_fewer_labels(_raw(r)/'t10k-labels-idx1-ubyte.gz'), D.build_dataset('fmnist_lt', root=r, imbalance_factor=1, split='test')), 't10k', ValueError),
    'fetch-unknown':         (lambda r: D.fetch('mnist', root=r), "'mnist'", ValueError),
}

@pytest.mark.parametrize('case', list(DATA_CASES))
def test_data(case, fm_root):
    f, name, exc = DATA_CASES[case]
    with pytest.raises(exc) as ei: f(fm_root)
    one_line(ei.value, name)


# ---------------------------------------------------------------- papermill parameters of nbs/experiments/train.ipynb
PARAM_CASES = {
    'config-json-not-str':   (dict(config_json=5, out_dir=''), 'config_json'),
    'config-json-not-json':  (dict(config_json='{"epochs": 3', out_dir=''), 'config_json'),
    'out-dir-not-str':       (dict(config_json='{}', out_dir=3), 'out_dir'),
    'epochs-a-string':       (dict(config_json='{"epochs": "3"}', out_dir=''), 'TrainConfig.epochs'),
    'amp-a-string':          (dict(config_json='{"amp": "yes"}', out_dir=''), 'TrainConfig.amp'),
    'unknown-field':         (dict(config_json='{"epoch": 3}', out_dir=''), 'epoch'),
    'out-dir-in-config':     (dict(config_json='{"out_dir": "/x"}', out_dir=''), 'out_dir'),
    'python-not-json':       (dict(config_json="__import__('os').system('true')", out_dir=''), 'config_json'),
}

@pytest.mark.parametrize('case', list(PARAM_CASES))
def test_notebook_parameters(case):
    kw, name = PARAM_CASES[case]
    with pytest.raises(ValueError) as ei: check_notebook_parameters(**kw)
    one_line(ei.value, name)

def test_wrong_typed_parameter_refused_before_papermill_starts(tmp_path, monkeypatch):
    "A job whose config has a wrong-typed field: run_job records the failure, papermill never starts, no kernel, no notebook."
    import papermill
    monkeypatch.setattr(papermill, 'execute_notebook', lambda *a, **k: pytest.fail('papermill started on a bad parameter'))
    job = plan_jobs('fmnist_lt', 'smoke', rows='softmax-if100', seeds=[0], results_root=tmp_path)[0]
    job.config['epochs'] = '1'
    res = run_job(job)
    assert res['state'] == 'failed'
    one_line(res['error'], 'TrainConfig.epochs')
    info = json.loads((Path(job.out_dir)/'error.json').read_text())
    assert info['error'] == res['error'] and not Path(job.executed).exists() and not (Path(job.out_dir)/'metrics.json').exists()


# ---------------------------------------------------------------- security: what the package's source does
SOURCES = sorted((ROOT/'ltpaper').rglob('*.py'))

def _calls(text, name):
    "The argument text of every call `name(...)` in `text` (parentheses matched)."
    out = []
    for m in re.finditer(re.escape(name) + r'\s*\(', text):
        i, depth = m.end(), 1
        while depth:
            depth += {'(': 1, ')': -1}.get(text[i], 0); i += 1
        out.append(text[m.end():i - 1])
    return out

def test_every_torch_load_passes_weights_only_true():
    calls = [(p.name, a) for p in SOURCES for a in _calls(p.read_text(), 'torch.load')]
    assert calls, 'expected at least the checkpoint loader'
    bad = [(n, a) for n, a in calls if not re.search(r'weights_only\s*=\s*True', a)]
    assert not bad, bad

def test_no_eval_exec_or_unsafe_yaml_in_the_package():
    for p in SOURCES:
        t = p.read_text()
        code = '\n'.join(l.split('#')[0] for l in t.splitlines())        # comments aside
        assert not re.search(r'(?<![\w.])(eval|exec|compile)\s*\(', code.replace('torch.compile(', '')), p.name
        assert not re.search(r'yaml\.(load|unsafe_load|full_load|load_all)\s*\(', code), p.name
        assert 'pickle.loads(' not in code or p.name == 'readers.py', p.name   # readers.py unpickles CIFAR batches only
    assert 'yaml.safe_load(' in (ROOT/'ltpaper'/'pipeline'/'tables.py').read_text()

def test_parameters_validated_before_injection():
    "Both papermill callers validate what they inject: run_job via notebook_parameters, the notebook itself again."
    src = (ROOT/'ltpaper'/'pipeline'/'runs.py').read_text() + (ROOT/'ltpaper'/'pipeline'/'launch.py').read_text()
    body = src[src.index('def run_job('):src.index('def _gpu_worker_init')]
    assert body.index('notebook_parameters(job)') < body.index('pm.execute_notebook(')
    nb = json.loads((ROOT/'nbs'/'experiments'/'train.ipynb').read_text())
    code = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code']
    first_use = next(i for i, c in enumerate(code) if 'check_notebook_parameters(config_json, out_dir)' in c)
    assert all('train(' not in c for c in code[:first_use + 1] if 'check_notebook_parameters(config_json' not in c)
