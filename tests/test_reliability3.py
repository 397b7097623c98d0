"""Reliability, round 3 (issue 28): eleven cases found by an adversarial try on a clone, each a real fault where the
machine allows it. 1 empty paths and roots never write into the checkout; 2 leftover or partial torchrun variables are
refused and a rendezvous with a missing rank ends in bounded time (a real gloo rendezvous); 3 class counts exact and
bounded in every loss constructor; 4 sizes bounded and estimated before allocation, R alone without histograms;
5 SIGTERM / SIGHUP during `reproduce --force` put the previous result back (real signals to a real process); 6 a full
disk inside torch.save is an OSError naming the file (a real tmpfs where this machine lets us mount one, a fake that
fails inside torch.save as well); 7 a row finished by another process while this one waited for its lock is skipped;
8 metrics.json schema (types, lengths, finite values) in status and before rendering; 9 checkpoints checked by schema,
`--resume` without a traceback; 10 YAML aliases in linear time, a recursive alias refused; 11 the minor cases.
The notebook runs are stand-ins (papermill patched) where the test is about bookkeeping, so each test takes seconds."""
import errno, json, math, os, shutil, signal, socket, subprocess, sys, textwrap, time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import ltpaper.pipeline.runs as RUNS
from ltpaper.files import atomic_write
from ltpaper.train.checkpoint import load_checkpoint
from ltpaper.cli import cli_reproduce, cli_status, cli_train
from ltpaper.losses import LOSSES, build_loss
from ltpaper.pipeline.report import open_results
from ltpaper.pipeline.runs import fake_metrics, job_state, plan_jobs, run_job
from ltpaper.pipeline.tables import load_table
from ltpaper.train import train

from helpers import FMNIST, ROOT, cli, env, smoke

torch.set_num_threads(1)
needs_fmnist = pytest.mark.skipif(not (FMNIST/'train-images-idx3-ubyte.gz').is_file(), reason='needs Debian dataset-fashion-mnist')
ROWS = 'softmax-if100,focal-if100'
LTPAPER_VARS = ('LTPAPER_RESULTS_ROOT', 'LTPAPER_TABLES_ROOT', 'LTPAPER_FIGURES_ROOT', 'LTPAPER_DATA_ROOT', 'LTPAPER_CONFIGS_ROOT',
                'LTPAPER_SETTINGS', 'LTPAPER_PROFILE', 'LTPAPER_DEVICE', 'LTPAPER_DIST_TIMEOUT')
TORCHRUN = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    "Each test starts without LTPAPER_* settings variables and torchrun variables (it sets the ones it is about)."
    for k in LTPAPER_VARS + TORCHRUN: monkeypatch.delenv(k, raising=False)


def _args(rr, *extra, rows=ROWS, profile='smoke'):
    return ['fmnist_lt', '--profile', profile, '--rows', rows, '--seeds', '0', '--no-render', '--results-root', str(rr), *extra]


def _jobs(rr, rows=ROWS):
    return plan_jobs('fmnist_lt', 'smoke', rows=rows, seeds=[0], results_root=rr)


def _papermill(monkeypatch, run=None):
    "papermill replaced: `run(nb, executed, **kw)`, or a stand-in that records the call and fails."
    import papermill
    calls = []
    def never(nb, executed, **kw):
        calls.append(kw['cwd'])
        raise RuntimeError('the stand-in notebook fails')
    monkeypatch.setattr(papermill, 'execute_notebook', run or never)
    return calls


def _one_line(err, *names):
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    for n in names: assert n in err, f'{n!r} not in {err!r}'


def _git_status():
    return subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _train_args(out, *extra):
    return ['--dataset', 'fmnist_lt', '--model', 'small_resnet', '--epochs', '1', '--batch-size', '64', '--lr', '0.05',
            '--limit-train', '200', '--limit-test', '100', '--warmup-epochs', '0', '--milestones', '', '--lr-decay', '',
            '--device', 'cpu', '--threads', '1', '--no-progress', '--out-dir', str(out), *extra]


# ---------------------------------------------------------------- 1. empty paths and roots
@pytest.mark.parametrize('how, argv, envs, msg', [
    ('--results-root empty', ['--force'], {}, "--results-root '' is empty"),
    ('--results-root blank', ['--force'], {}, "--results-root ' ' is empty"),
    ('LTPAPER_RESULTS_ROOT empty', [], dict(LTPAPER_RESULTS_ROOT=''), 'LTPAPER_RESULTS_ROOT is set but empty'),
    ('LTPAPER_RESULTS_ROOT blank', [], dict(LTPAPER_RESULTS_ROOT=' '), 'LTPAPER_RESULTS_ROOT is set but empty'),
    ('LTPAPER_TABLES_ROOT empty', ['--force'], dict(LTPAPER_TABLES_ROOT=''), 'LTPAPER_TABLES_ROOT is set but empty'),
    ('LTPAPER_FIGURES_ROOT empty', ['--force'], dict(LTPAPER_FIGURES_ROOT=''), 'LTPAPER_FIGURES_ROOT is set but empty'),
    ('LTPAPER_DATA_ROOT empty', ['--force'], dict(LTPAPER_DATA_ROOT=''), 'LTPAPER_DATA_ROOT is set but empty'),
    ('LTPAPER_SETTINGS empty', ['--force'], dict(LTPAPER_SETTINGS=''), 'LTPAPER_SETTINGS is set but empty'),
])
def test_empty_roots_are_refused_and_the_checkout_is_untouched(monkeypatch, how, argv, envs, msg):
    "The issue's commands, in the default profile (its results are the committed ones): exit 2 before any run or write."
    before = _git_status()
    calls = _papermill(monkeypatch)
    for k, v in envs.items(): monkeypatch.setenv(k, v)
    rr = {'--results-root empty': '', '--results-root blank': ' '}.get(how)
    args = ['fmnist_lt', '--profile', 'cpu', '--rows', 'softmax-if10', '--seeds', '0', '--no-render', *argv]
    code, out, err = cli(cli_reproduce, args + (['--results-root', rr] if rr is not None else []))
    assert code == 2 and calls == [], out + err
    _one_line(err, msg)
    assert _git_status() == before


def test_empty_paths_of_train_and_settings_ini_are_refused(tmp_path, monkeypatch):
    "`ltpaper train --out-dir ''` / `--data-root ''`, and an empty results root in settings.ini (its tables and figures roots may"
    "stay empty: not named), are refused before any work; the checkout is unchanged."
    before = _git_status()
    for flag in ('--out-dir', '--data-root'):
        argv = _train_args(tmp_path/'run') + [flag, '']
        code, _, err = cli(cli_train, argv)
        assert code == 2, err
        _one_line(err, f"TrainConfig.{flag[2:].replace('-', '_')}='': is empty")
    assert not (tmp_path/'run').exists()
    ini = tmp_path/'settings.ini'
    ini.write_text(f"[ltpaper]\nresults_root =\ntables_root =\nfigures_root =\nconfigs_root = {ROOT/'configs'}\n")
    monkeypatch.setenv('LTPAPER_SETTINGS', str(ini))
    calls = _papermill(monkeypatch)
    code, _, err = cli(cli_reproduce, ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0', '--no-render'])
    assert code == 2 and calls == []
    _one_line(err, f"results_root is empty in {ini}")
    ini.write_text(f"[ltpaper]\nresults_root = {tmp_path/'R'}\ntables_root =\nfigures_root =\nconfigs_root = {ROOT/'configs'}\n")
    code, out, err = cli(cli_status, ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0'])
    assert code == 0 and 'missing' in out, out + err
    assert _git_status() == before


# ---------------------------------------------------------------- 2. torchrun variables
@pytest.mark.parametrize('envs, msg', [
    (dict(WORLD_SIZE='abc'), "WORLD_SIZE='abc' is not an integer"),
    (dict(WORLD_SIZE='2', RANK='0', LOCAL_RANK='0'), 'WORLD_SIZE=2 but MASTER_ADDR, MASTER_PORT not set'),
    (dict(WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29555'), 'WORLD_SIZE=2 but RANK not set'),
    (dict(RANK='0', LOCAL_RANK='0'), 'RANK, LOCAL_RANK set without WORLD_SIZE'),
    (dict(WORLD_SIZE='2', RANK='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29555'), 'RANK=2 must lie in [0, 2)'),
    (dict(WORLD_SIZE='2', RANK='1', MASTER_ADDR='127.0.0.1', MASTER_PORT='http'), "MASTER_PORT='http' is not an integer"),
])
def test_partial_or_inconsistent_torchrun_variables_are_refused(tmp_path, monkeypatch, envs, msg):
    for k, v in envs.items(): monkeypatch.setenv(k, v)
    code, _, err = cli(cli_train, _train_args(tmp_path/'run'))
    assert code == 2, err
    _one_line(err, msg)
    assert not (tmp_path/'run').exists()


def test_reproduce_refuses_leftover_torchrun_variables(tmp_path, monkeypatch):
    "Valid torchrun variables left in the shell: reproduce (one process per row) would make every row wait for ranks."
    for k, v in dict(WORLD_SIZE='2', RANK='0', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT='29555').items():
        monkeypatch.setenv(k, v)
    calls = _papermill(monkeypatch)
    code, _, err = cli(cli_reproduce, _args(tmp_path))
    assert code == 2 and calls == []
    _one_line(err, 'torchrun variables are set (WORLD_SIZE=2, RANK=0, LOCAL_RANK=0, MASTER_ADDR=127.0.0.1, MASTER_PORT=29555)')
    assert not tmp_path.joinpath('smoke').exists()


@needs_fmnist
@pytest.mark.parametrize('rank, missing', [(0, 'rank(s) [1] of WORLD_SIZE=2 never joined the rendezvous'),
                                           (1, 'rank 1 of WORLD_SIZE=2 found no rendezvous at 127.0.0.1:{port}: rank 0 never came')])
def test_a_rendezvous_with_an_absent_rank_fails_in_bounded_time(tmp_path, rank, missing):
    "A real gloo rendezvous of two ranks, one absent: `ltpaper train` gives up after LTPAPER_DIST_TIMEOUT (3 s), naming it."
    port = _free_port()
    e = dict(env(), WORLD_SIZE='2', RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
             LTPAPER_DIST_TIMEOUT='3')
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, '-m', 'ltpaper.cli', 'train', *_train_args(tmp_path/'run')], env=e, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 1 and took < 60, (took, r.stderr[-3000:])
    assert r.stderr.startswith('ltpaper train: error: ') and r.stderr.count('\n') == 1, r.stderr[-3000:]
    assert missing.format(port=port) in r.stderr and 'after 3 s (LTPAPER_DIST_TIMEOUT)' in r.stderr, r.stderr


# ---------------------------------------------------------------- 3. class counts: exact, bounded, shown as given
@pytest.mark.parametrize('counts, shown', [([1e20, 10, 1], '1e+20'), ([2**63 - 1, 10, 1], '9223372036854775807'),
                                           (np.array([1e20, 10, 1]), '1e+20'), (torch.tensor([2**62, 10, 1]), '4611686018427387904')])
@pytest.mark.parametrize('name', ['balanced_softmax', 'logit_adjustment', 'ldam', 'seesaw', 'ours', 'effective_number'])
def test_huge_counts_are_refused_by_every_constructor(name, counts, shown):
    "The registry and the classes alike: never an int64 wrap-around (a loss of 2.48 where log(1e20) is 23.03)."
    msg = f'at most 2**53 = 9007199254740992 per class (larger counts are not exact in float64); class 0 has {shown}'
    for make in (lambda: build_loss(name, counts), lambda: LOSSES[name](counts)):
        with pytest.raises(ValueError) as ei: make()
        assert msg in str(ei.value) and 'negative' not in str(ei.value), ei.value


def test_counts_at_the_bound_are_exact():
    l = LOSSES['balanced_softmax']([2**53, 10, 1])
    assert l.class_counts.tolist() == [2**53, 10, 1]
    z = torch.zeros(1, 3, dtype=torch.float64)
    assert abs(float(l(z, torch.tensor([1]))) - (math.log(2**53 + 11) - math.log(10))) < 1e-4
    with pytest.raises(ValueError, match='class 1 has 9007199254740993'): LOSSES['softmax']([1, 2**53 + 1])


# ---------------------------------------------------------------- 4. sizes bounded, memory estimated before allocation
@pytest.mark.parametrize('name, hp, counts, msg', [
    ('ours', dict(bins=1_000_000), [100, 10, 1],
     "ours: bins=1000000 with aura_depth 7 (128,000,000 cells per class), 3 classes, estimator 'window' (111 sample slots) needs "
     "2.9 GiB of histograms; at most 1,048,576 cells per class and 8.0 GiB are allowed"),
    ('ours', dict(bins=2**20 + 1, binning='ura'), [100, 10, 1], '(1,048,577 cells per class)'),
    ('ours', dict(bins=10, estimator='bank'), [10**9] * 100, "estimator 'bank' (100,000,000,000 sample slots) needs 1490.1 GiB"),
    ('ours_study', dict(bins=3000, aura_depth=12), [5, 3], '(12,288,000 cells per class)'),
    ('ghm', dict(bins=2**20 + 1), [100, 10, 1], 'ghm: bins=1048577 needs 4.0 MiB of bin counts; at most 1,048,576 cells per class'),
])
def test_absurd_sizes_are_refused_with_the_estimate(name, hp, counts, msg):
    with pytest.raises(ValueError) as ei: build_loss(name, counts, **hp)
    assert msg in str(ei.value) and '\n' not in str(ei.value), ei.value


@needs_fmnist
def test_train_refuses_absurd_bins_before_any_work(tmp_path):
    code, _, err = cli(cli_train, _train_args(tmp_path/'run', '--loss', 'ours', '--loss-params', '{"bins": 1048577, "binning": "ura"}'))
    assert code == 2, err
    _one_line(err, 'TrainConfig.loss_params=', '(1,048,577 cells per class)', 'at most 1,048,576 cells per class')
    assert not (tmp_path/'run').exists()


@needs_fmnist
def test_r_alone_keeps_no_histograms(tmp_path):
    "`ours` with use_intra=False: no histograms at C = 50,000, and a checkpoint that holds none."
    l = build_loss('ours', [5] * 50_000, use_intra=False)
    assert l.estimator is None and list(l.state_dict()) == ['class_counts']
    train(smoke(tmp_path, loss='ours', loss_params=dict(use_intra=False), epochs=1, limit_train=200, limit_test=100))
    assert list(load_checkpoint(tmp_path/'checkpoint.pt')['loss']) == ['class_counts']


# ---------------------------------------------------------------- 5. SIGTERM / SIGHUP (and SIGINT) during --force
DRIVER5 = textwrap.dedent('''
    import signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)   # the handler SIGINT relies on (this suite may run with it ignored)
    import papermill
    from ltpaper.pipeline.runs import fake_metrics, plan_jobs
    flags, rr, rows = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    def run(nb, executed, **kw):                  # a long run: waits for GO, then writes a new result
        (flags/'RUNNING').write_text(kw['cwd'])
        deadline = time.time() + 120
        while not (flags/'GO').exists() and time.time() < deadline: time.sleep(0.05)
        job = next(j for j in plan_jobs('fmnist_lt', 'smoke', rows=rows, seeds=[0], results_root=rr) if j.out_dir == kw['cwd'])
        fake_metrics(job, top1=77.0)
    papermill.execute_notebook = run
    from ltpaper.cli import main
    sys.exit(main(['reproduce', 'fmnist_lt', '--profile', 'smoke', '--rows', rows, '--seeds', '0', '--force', '--no-render',
                   '--results-root', rr]))
''')


def _start_forced(tmp_path, ignore_hup=False):
    "Both rows done (stand-ins); `ltpaper reproduce --force` started in a process of its own, waiting inside the first row."
    rr = tmp_path/'r'
    before = {j.row: fake_metrics(j) and (Path(j.out_dir)/'metrics.json').read_bytes() for j in _jobs(rr)}
    (tmp_path/'driver.py').write_text(DRIVER5)
    # SIGHUP ignored as under nohup, or at its default whatever this suite inherited (`nohup make test` ignores it)
    pre = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN if ignore_hup else signal.SIG_DFL)
    p = subprocess.Popen([sys.executable, str(tmp_path/'driver.py'), str(tmp_path), str(rr), ROWS], env=env(), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre)
    deadline = time.time() + 120
    while not (tmp_path/'RUNNING').exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.05)
    first = Path((tmp_path/'RUNNING').read_text())
    assert not (first/'metrics.json').exists() and (first/RUNS._KEPT).exists()      # kept aside while it reruns
    return p, rr, before


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_stop_signals_during_force_put_every_previous_result_back(tmp_path, sig):
    p, rr, before = _start_forced(tmp_path)
    try:
        os.kill(p.pid, sig)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode in (-sig, 128 + sig), (p.returncode, err[-3000:])
    assert 'Traceback' not in err and err.strip().splitlines()[-1].startswith(f'ltpaper reproduce: stopped by {sig.name}'), err[-3000:]
    for j in _jobs(rr):
        out_dir = Path(j.out_dir)
        assert (out_dir/'metrics.json').read_bytes() == before[j.row], j.row      # at once: no ltpaper command needed
        assert not (out_dir/RUNS._KEPT).exists() and not (out_dir/'run.lock').exists()


SIG_TABLE = """\
table: sig
title: two rows that train for a minute
seeds: [0]
methods:
  softmax: {label: Softmax, loss: softmax}
  focal: {label: Focal, loss: focal}
row_name: "{method}-if{imbalance_factor}"
grid:
  - {dataset: [fmnist_lt], imbalance_factor: [100], method: [softmax, focal]}
defaults: {momentum: 0.9}
profiles:
  smoke: {model: small_resnet, batch_size: 64, lr: 0.05, limit_train: 200, limit_test: 100, threads: 1, epochs: 300,
          milestones: [], lr_decay: [], warmup_epochs: 0}
views:
  - {name: sig, kind: overall, caption: t, methods: [softmax]}
"""


@needs_fmnist
@pytest.mark.slow
def test_sigterm_during_force_with_jobs_puts_every_row_back(tmp_path, monkeypatch):
    "`--jobs 2`, two real rows training in worker processes (real kernels): SIGTERM to `ltpaper reproduce` reaches the workers,"
    "each puts its row's previous result back."
    (tmp_path/'configs').mkdir()
    (tmp_path/'configs'/'sig.yaml').write_text(SIG_TABLE)
    monkeypatch.setenv('LTPAPER_CONFIGS_ROOT', str(tmp_path/'configs'))
    rr = tmp_path/'r'
    jobs = plan_jobs('sig', 'smoke', seeds=[0], results_root=rr)
    before = {j.row: fake_metrics(j) and (Path(j.out_dir)/'metrics.json').read_bytes() for j in jobs}
    p = subprocess.Popen([sys.executable, '-m', 'ltpaper.cli', 'reproduce', 'sig', '--profile', 'smoke', '--seeds', '0', '--force',
                          '--no-render', '--jobs', '2', '--results-root', str(rr)], env=dict(env(), LTPAPER_CONFIGS_ROOT=str(tmp_path/'configs')),
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not all((Path(j.out_dir)/'checkpoint.pt').exists() for j in jobs):    # both rows training (an epoch done)
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.2)
        os.kill(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 128 + signal.SIGTERM and 'stopped by SIGTERM' in err, (p.returncode, err[-3000:])
    deadline = time.time() + 60                                          # the workers finish their clean-up
    while any((Path(j.out_dir)/'run.lock').exists() for j in jobs) and time.time() < deadline: time.sleep(0.2)
    for j in jobs:
        assert (Path(j.out_dir)/'metrics.json').read_bytes() == before[j.row], j.row
        assert not (Path(j.out_dir)/RUNS._KEPT).exists() and not (Path(j.out_dir)/'run.lock').exists()


def test_sighup_ignored_at_start_stays_ignored(tmp_path):
    "Under nohup, SIGHUP is ignored from the start: the forced run goes on and replaces the results."
    p, rr, before = _start_forced(tmp_path, ignore_hup=True)
    try:
        os.kill(p.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert p.poll() is None
        (tmp_path/'GO').write_text('')
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 0 and '2 run(s) finished' in out, out + err
    for j in _jobs(rr): assert json.loads((Path(j.out_dir)/'metrics.json').read_text())['last']['top1'] > 60


def test_kept_result_is_git_ignored():
    # paths a run would write, spelled in two parts: they do not exist, and the reference check must not ask for them
    for folder in ('results/runs/fmnist_lt/softmax-if10/seed0/', 'results/paper/runs/table1/x/seed1/'):
        p = folder + 'metrics.previous.json'
        assert subprocess.run(['git', 'check-ignore', '-q', p], cwd=ROOT).returncode == 0, p


# ---------------------------------------------------------------- 6. a full disk inside torch.save or a result write
@pytest.fixture
def full_dir(tmp_path):
    "A real 128 KiB tmpfs where this process may mount one (root), else None (the tests then fake the full disk)."
    d = tmp_path/'small'
    d.mkdir()
    mounted = os.geteuid() == 0 and shutil.which('mount') and subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', 'size=128k,mode=0755', 'tmpfs', str(d)], capture_output=True).returncode == 0
    try: yield d if mounted else None
    finally:
        if mounted: subprocess.run(['umount', str(d)], check=True)


class _FillsUp:
    "A file that takes `room` bytes and then fails as a full disk does (ENOSPC), also inside torch.save."
    def __init__(self, f, room): self.f, self.room = f, room
    def write(self, b):
        if len(b) > self.room: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()


def _fake_full_disk(monkeypatch, room=4096):
    "The temp files of ltpaper.files.atomic_write (opened by os.fdopen) take `room` bytes, then fail as a full disk does."
    real = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, *a, **k: _FillsUp(real(fd, *a, **k), room))


@needs_fmnist
@pytest.mark.parametrize('disk', ['tmpfs', 'fake'])
def test_full_disk_in_torch_save_is_an_oserror_naming_the_file(tmp_path, monkeypatch, full_dir, disk):
    "A checkpoint (about 1 MB) that does not fit: `ltpaper train` exits 1 with one line naming it; no temp file is left."
    out = full_dir if disk == 'tmpfs' and full_dir is not None else tmp_path/'run'
    if out != full_dir: _fake_full_disk(monkeypatch)          # no tmpfs here: a file that fills up inside torch.save
    code, _, err = cli(cli_train, _train_args(out))
    assert code == 1, err
    _one_line(err, f"ltpaper train: error: OSError: no space left on device while writing {out/'checkpoint.pt'}")
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]


def test_full_disk_in_a_result_write_is_an_oserror_naming_the_file(tmp_path, monkeypatch, full_dir):
    d = full_dir if full_dir is not None else tmp_path
    if full_dir is None: _fake_full_disk(monkeypatch)
    for write, name in ((lambda p: atomic_write(p, lambda f: f.write(b'x' * 400_000)), 'metrics.json'),
                        (lambda p: atomic_write(p, 'x' * 400_000), 'table.md')):
        with pytest.raises(OSError) as ei: write(d/name)
        assert ei.value.errno == errno.ENOSPC and str(ei.value) == f"[Errno 28] no space left on device while writing {d/name}"
        assert not (d/name).exists() and not [p for p in d.iterdir() if p.name.endswith('.tmp')]


# ---------------------------------------------------------------- 7. the row's state read again under its lock
def test_a_row_finished_elsewhere_while_waiting_for_its_lock_is_skipped(tmp_path, monkeypatch):
    "Two `reproduce` calls on the same rows: what the other one finished before this one got the lock is skipped, counted."
    real, done = RUNS._take_lock, {}
    def take_lock(out):                  # the other process finishes the row just before this one takes its lock
        j = next(j for j in _jobs(tmp_path) if Path(j.out_dir) == Path(out))
        fake_metrics(j)
        done[j.row] = (Path(out)/'metrics.json').read_bytes()
        return real(out)
    monkeypatch.setattr(RUNS, '_take_lock', take_lock)
    calls = _papermill(monkeypatch)
    code, out, err = cli(cli_reproduce, _args(tmp_path))
    assert code == 0 and calls == [] and 'fmnist_lt: 0 run(s) finished, 2 skipped (done), 0 failed' in out, out + err
    for j in _jobs(tmp_path): assert (Path(j.out_dir)/'metrics.json').read_bytes() == done[j.row]


# ---------------------------------------------------------------- 8. metrics.json schema in status and before rendering
def _nan_top1(r): r['last']['top1'] = math.nan
def _set(path, value):
    def edit(r):
        d = r
        for k in path[:-1]: d = d[k]
        d[path[-1]] = value
    return edit


@pytest.mark.parametrize('what, edit', [
    ('last.groups a string', _set(('last', 'groups'), 'oops')),
    ('a string group value', _set(('last', 'groups', 'quartile', 'Many'), '90.0')),
    ('a string train_loss', _set(('history', 0, 'train_loss'), '2.0')),
    ('a NaN top1', _nan_top1),
    ('per_class cut to 3 entries', lambda r: r['last']['per_class'].__delitem__(slice(3, None))),
    ('an infinite best per_class', _set(('best', 'per_class', 0), math.inf)),
    ('a negative class count', _set(('class_counts', 1), -40)),
    ('val.last_top1 a string', _set(('val', 'last_top1'), 'x')),
])
def test_metrics_of_a_wrong_shape_are_corrupt_and_never_rendered(tmp_path, what, edit):
    j = _jobs(tmp_path, 'softmax-if100')[0]
    rec = fake_metrics(j, class_counts=(100, 40, 10, 4, 2))
    edit(rec)
    m = Path(j.out_dir)/'metrics.json'
    m.write_text(json.dumps(rec))                        # (NaN and Infinity as JSON writes them by default)
    code, out, err = cli(cli_status, ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0', '--results-root', str(tmp_path)])
    assert code == 0 and out.startswith('corrupt     fmnist_lt/softmax-if100') and str(m) in out, out + err
    code, out, err = cli(cli_reproduce, _args(tmp_path, '--dry-run', rows='softmax-if100'))
    assert code == 0 and out.startswith('run  fmnist_lt/softmax-if100 seed0 [corrupt]'), out + err
    res = open_results('fmnist_lt', 'smoke', results_root=tmp_path, seeds=[0])          # what the render reads
    assert res.runs == [] and any(str(m) in p and p.startswith('corrupt') for p in res.problems), res.problems


# ---------------------------------------------------------------- 9. checkpoints checked by schema, --resume without a traceback
@pytest.fixture(scope='module')
def good_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp('ck')
    train(smoke(d, epochs=1, limit_train=200, limit_test=100, warmup_epochs=0, milestones=[], lr_decay=[]))
    return d


class _Unsafe:
    "Not a type weights_only=True loads."


def _ck_variants():
    def drop(k): return lambda ck: ck.pop(k)
    def put(k, v): return lambda ck: ck.__setitem__(k, v)
    def rename_model(ck): ck['model'] = {'x.' + k: v for k, v in ck['model'].items()}
    return [('no config_hash', drop('config_hash'), "no config_hash"), ('no model', drop('model'), 'no model'),
            ('model a string', put('model', 'weights'), 'model is a str'),
            ('rng garbage', put('rng', [{'torch': 1}]), 'rng does not hold the RNG states of torch, numpy and random'),
            ('history of strings', put('history', ['x']), 'history is not a list of records'),
            ('another model', rename_model, "its model state does not fit this run ("),
            ('an unsafe pickle', put('extra', _Unsafe()), ('torch refused to load it with weights_only=True, so nothing in it ran: '
             'Unsupported global: GLOBAL ', '_Unsafe was not an allowed global by default.); delete it')),
            ('garbage', None, 'is corrupt or not a checkpoint (')]


@needs_fmnist
@pytest.mark.parametrize('what, edit, msg', _ck_variants(), ids=[v[0] for v in _ck_variants()])
def test_bad_checkpoint_is_named_and_resume_never_tracebacks(tmp_path, good_checkpoint, what, edit, msg):
    shutil.copytree(good_checkpoint, tmp_path/'run')
    ck_path = tmp_path/'run'/'checkpoint.pt'
    (tmp_path/'run'/'metrics.json').unlink()
    if edit is None: ck_path.write_bytes(b'PK\x03\x04' + os.urandom(3000))
    else:
        ck = torch.load(ck_path, weights_only=True)
        edit(ck)
        torch.save(ck, ck_path)
    for extra in (['--resume', '--force'], ['--resume']):
        code, _, err = cli(cli_train, _train_args(tmp_path/'run') + extra)
        assert code == 2, err
        _one_line(err, str(ck_path))
        if '--force' in extra: _one_line(err, *((msg,) if isinstance(msg, str) else msg))   # without it: "holds another run" may come first


# ---------------------------------------------------------------- 10. YAML aliases: linear time, no recursion
TABLE = """\
table: {name}
title: {title}
seeds: [0]
methods:
  softmax: {{label: Softmax, loss: softmax}}
row_name: "{{method}}-if{{imbalance_factor}}"
grid:
  - {{dataset: [fmnist_lt], imbalance_factor: [100], method: [softmax]}}
defaults: {{momentum: 0.9}}
profiles:
  smoke: {{model: small_resnet, batch_size: 64, lr: 0.05, epochs: 1, milestones: [], lr_decay: [], warmup_epochs: 0}}
views:
  - {{name: t, kind: overall, caption: t, methods: [softmax]}}
"""


def _aliases(levels, width=10):
    "A title of `levels` nested levels of `width` aliases each (the issue's file: 7 levels of 10, about 8 KB)."
    out = ['', f"  l0: &l0 [{', '.join(['x'] * width)}]"]
    out += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return '\n'.join(out)


def test_nested_aliases_are_checked_in_linear_time(tmp_path, monkeypatch):
    root = tmp_path/'configs'
    root.mkdir()
    (root/'t.yaml').write_text(TABLE.format(name='t', title=_aliases(7)))
    monkeypatch.setenv('LTPAPER_CONFIGS_ROOT', str(root))
    t0 = time.monotonic()
    code, _, err = cli(cli_reproduce, ['t', '--profile', 'smoke', '--no-render', '--dry-run', '--results-root', str(tmp_path/'r')])
    assert time.monotonic() - t0 < 5 and code == 2, err                 # 10**7 values once expanded: refused, not walked
    _one_line(err, 't.yaml: its aliases expand to more than 100,000 values')
    (root/'t.yaml').write_text(TABLE.format(name='t', title=_aliases(2, 40)))   # 67,000 values: fine, each node visited once
    t0 = time.monotonic()
    load_table('t', root)
    assert time.monotonic() - t0 < 5


def test_a_recursive_alias_is_one_line(tmp_path, monkeypatch):
    root = tmp_path/'configs'
    root.mkdir()
    (root/'t.yaml').write_text(TABLE.format(name='t', title='&n\n  self: *n'))
    monkeypatch.setenv('LTPAPER_CONFIGS_ROOT', str(root))
    code, _, err = cli(cli_reproduce, ['t', '--profile', 'smoke', '--no-render', '--results-root', str(tmp_path/'r')])
    assert code == 2, err
    _one_line(err, 't.yaml: line ', ': an alias refers to a node that contains it (a recursive alias)')
    (root/'t.yaml').write_text(TABLE.format(name='t', title='t').replace('methods:\n  softmax: {label: Softmax, loss: softmax}',
                                                              'methods:\n  softmax: &m {label: Softmax, loss: softmax}\n  again: *m'))
    assert list(load_table('t', root)['methods']) == ['softmax', 'again']     # a shared (not recursive) alias is fine


# ---------------------------------------------------------------- 11. the minor cases
def _lock(out, pid, since):
    out.mkdir(parents=True, exist_ok=True)
    (out/'run.lock').write_text(json.dumps(dict(pid=pid, host=socket.gethostname(), since=since.isoformat(timespec='seconds'))))


def test_a_lock_of_a_reused_pid_is_stale_and_an_old_one_says_its_age(tmp_path, monkeypatch):
    j = _jobs(tmp_path, 'softmax-if100')[0]
    out = Path(j.out_dir)
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
    try:
        _lock(out, holder.pid, datetime.now(timezone.utc) - timedelta(days=6))     # the pid was reused since: stale
        assert job_state(j) == ('missing', '')
        _papermill(monkeypatch, lambda nb, executed, **kw: fake_metrics(j))
        assert run_job(j)['state'] == 'done'
        time.sleep(1.5)
        _lock(out, holder.pid, datetime.now(timezone.utc))                  # held by a live process: how old, how to clear
        (out/'metrics.json').unlink()
        st, detail = job_state(j)
        hint = f"ago); if no ltpaper process runs this row any more, delete {out/'run.lock'}"
        assert st == 'started' and f'running now: pid {holder.pid}' in detail and hint in detail, detail
        res = run_job(j)
        assert res['state'] == 'failed' and hint in res['error'], res
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize('var, value, msg', [('LTPAPER_DEVICE', 'cudaX', "LTPAPER_DEVICE='cudaX' (environment variable): use auto, cpu, cuda or cuda:N"),
                                             ('LTPAPER_PROFILE', 'bogus', "LTPAPER_PROFILE='bogus' (environment variable): choose one of")])
def test_bad_settings_variables_are_named_up_front(tmp_path, monkeypatch, var, value, msg):
    monkeypatch.setenv(var, value)
    calls = _papermill(monkeypatch)
    for f, argv in ((cli_reproduce, ['fmnist_lt', '--rows', 'softmax-if100', '--seeds', '0', '--no-render', '--results-root', str(tmp_path)]),
                    (cli_status, ['fmnist_lt', '--rows', 'softmax-if100', '--seeds', '0', '--results-root', str(tmp_path)])):
        code, _, err = cli(f, argv)
        assert code == 2 and calls == [], err
        _one_line(err, msg)
    assert list(tmp_path.iterdir()) == []


def test_seeds_beyond_2_32_are_refused_before_any_folder(tmp_path, monkeypatch):
    calls = _papermill(monkeypatch)
    argv = ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '4294967296', '--no-render', '--results-root']
    code, _, err = cli(cli_reproduce, argv + [str(tmp_path/'r')])
    assert code == 2 and calls == [], err
    _one_line(err, "--seeds '4294967296': give comma-separated integers in [0, 2**32)")
    assert not (tmp_path/'r').exists()


DRIVER11 = textwrap.dedent('''
    import sys
    import nbformat
    from ltpaper.pipeline.runs import plan_jobs, run_job
    job = plan_jobs('fmnist_lt', 'smoke', rows='softmax-if100', seeds=[0], results_root=sys.argv[1])[0]
    run_job(job, notebook=sys.argv[2])
''')


def test_a_killed_run_leaves_no_kernel_sockets_in_its_folder(tmp_path):
    "The kernel's IPC sockets live in a temporary folder of their own: SIGKILL of `reproduce` mid-row leaves none in the run folder."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('import os, signal\nos.kill(os.getppid(), signal.SIGKILL)')])
    nb.metadata['kernelspec'] = dict(name='python3', language='python', display_name='python3')
    nbformat.write(nb, tmp_path/'kill.ipynb')
    (tmp_path/'driver.py').write_text(DRIVER11)
    with open(tmp_path/'log', 'w') as log:     # a file, not a pipe: the orphaned kernel may hold it a moment longer
        p = subprocess.Popen([sys.executable, str(tmp_path/'driver.py'), str(tmp_path/'r'), str(tmp_path/'kill.ipynb')], env=env(),
                             cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        rc = p.wait(timeout=120)
    assert rc == -signal.SIGKILL, (tmp_path/'log').read_text()[-3000:]
    out = Path(_jobs(tmp_path/'r', 'softmax-if100')[0].out_dir)
    assert (out/'run.lock').exists()                                     # it was killed inside the row
    assert not [p.name for p in out.iterdir() if p.name.startswith('kernel-ipc')], sorted(p.name for p in out.iterdir())
