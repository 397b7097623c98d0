"""Faults injected into real runs (CPU, smoke sizes: Fashion-MNIST-LT capped at a few hundred images, small_resnet):
SIGKILL of a training process and of `ltpaper reproduce` mid-table, a row that raises (non-finite loss), corrupt
checkpoint / metrics.json, disk full while writing results. Each test says what must survive."""
import errno, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

import ltpaper.pipeline.launch as L
import ltpaper.pipeline.runs as R
from ltpaper.cli import cli_reproduce, cli_status, cli_train
from ltpaper.files import atomic_write
from ltpaper.train.checkpoint import load_checkpoint
from ltpaper.train import train

from helpers import DRIVER, FMNIST, cli, comparable, env, smoke

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not (FMNIST/'train-images-idx3-ubyte.gz').is_file(), reason='needs Debian dataset-fashion-mnist')


def tmp_files(d: Path) -> list:
    return sorted(p.name for p in Path(d).rglob('*') if p.name.endswith('.tmp'))


def cli_args(out_dir) -> list:
    "`ltpaper train` flags of the smoke() config at 1 epoch, 200/100 images."
    return ['--dataset', 'fmnist_lt', '--model', 'small_resnet', '--epochs', '1', '--batch-size', '64', '--lr', '0.05', '--limit-train', '200',
            '--limit-test', '100', '--warmup-epochs', '1', '--milestones', '1', '--lr-decay', '0.1', '--device', 'cpu', '--threads', '1',
            '--no-progress', '--out-dir', str(out_dir)]


# ---------------------------------------------------------------- training process: SIGKILL mid-epoch, then resume
def test_sigkill_mid_epoch_then_resume_seesaw(tmp_path):
    "test_train.py kills an `ours` run; the same scenario for Seesaw, whose accumulated class counts (a buffer) must survive."
    driver = tmp_path/'driver.py'; driver.write_text(DRIVER)
    cfg = smoke(tmp_path/'killed', loss='seesaw', epochs=2, limit_train=250, limit_test=100)
    p = subprocess.Popen([sys.executable, str(driver), json.dumps(cfg.__dict__), '2'], env=env(), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ref = train(smoke(tmp_path/'ref', loss='seesaw', epochs=2, limit_train=250, limit_test=100))
        deadline = time.time() + 120
        while not (tmp_path/'killed'/'HANGING').exists():
            assert p.poll() is None, p.stdout.read().decode()[-3000:]
            assert time.time() < deadline, 'the training subprocess did not reach epoch 2'
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)                                  # mid-epoch 2
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None: p.kill(); p.wait()
    ck = load_checkpoint(tmp_path/'killed'/'checkpoint.pt')
    assert ck['epoch'] == 1 and ck['loss'] and not (tmp_path/'killed'/'metrics.json').exists()
    assert any(float(v.float().abs().sum()) > 0 for v in ck['loss'].values())   # Seesaw's cumulative counts were saved
    resumed = train(smoke(tmp_path/'killed', loss='seesaw', epochs=2, limit_train=250, limit_test=100, resume=True))
    assert comparable(resumed) == comparable(ref)
    assert tmp_files(tmp_path/'killed') == []


# ---------------------------------------------------------------- corrupt checkpoint: one-line error naming it, rerun from scratch
def test_corrupt_checkpoint_names_file_then_fresh_run(tmp_path, capsys):
    train(smoke(tmp_path, epochs=1, limit_train=200, limit_test=100))
    ck = tmp_path/'checkpoint.pt'
    ck.write_bytes(ck.read_bytes()[:1000])                              # truncated, as a crash mid-copy leaves it
    with pytest.raises(ValueError) as ei:
        train(smoke(tmp_path, epochs=1, limit_train=200, limit_test=100, resume=True))
    msg = str(ei.value)
    assert str(ck) in msg and 'corrupt' in msg and '\n' not in msg
    capsys.readouterr()
    assert cli_train(cli_args(tmp_path) + ['--resume']) == 2                          # CLI: exit 2, one line naming the file
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(ck) in err, err
    m = train(smoke(tmp_path, epochs=1, limit_train=200, limit_test=100, resume=False))   # from scratch
    assert m['status'] == 'complete' and load_checkpoint(ck)['epoch'] == 1


# ---------------------------------------------------------------- disk full while writing results
def _enospc_for(name, real):
    def replace(src, dst, *a, **k):
        if Path(dst).name == name: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)
    return replace

def test_disk_full_writing_metrics_keeps_previous_metrics(tmp_path, monkeypatch, capsys):
    kw = dict(epochs=1, limit_train=200, limit_test=100)
    train(smoke(tmp_path, **kw))
    before = (tmp_path/'metrics.json').read_bytes()
    monkeypatch.setattr(os, 'replace', _enospc_for('metrics.json', os.replace))
    with pytest.raises(OSError) as ei:
        train(smoke(tmp_path, seed=1, **kw))                            # a rerun whose final write hits a full disk
    assert ei.value.errno == errno.ENOSPC and str(tmp_path/'metrics.json') in str(ei.value) and '\n' not in str(ei.value)
    assert (tmp_path/'metrics.json').read_bytes() == before             # the previous results intact
    assert tmp_files(tmp_path) == []                                    # no temp file left behind
    capsys.readouterr()
    assert cli_train(cli_args(tmp_path) + ['--seed', '2', '--force']) == 1                                         # CLI: exit 1 and one line, no traceback
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'OSError: no space left on device while writing' in err and 'metrics.json' in err, err
    assert (tmp_path/'metrics.json').read_bytes() == before and tmp_files(tmp_path) == []

def test_disk_full_writing_checkpoint_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    train(smoke(tmp_path, epochs=1, limit_train=200, limit_test=100))
    before = (tmp_path/'checkpoint.pt').read_bytes()
    def fsync(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # a full disk surfaces at flush/fsync
    monkeypatch.setattr(os, 'fsync', fsync)
    with pytest.raises(OSError, match='no space left on device while writing .*checkpoint.pt'):
        train(smoke(tmp_path, epochs=1, seed=1, limit_train=200, limit_test=100))
    assert (tmp_path/'checkpoint.pt').read_bytes() == before and load_checkpoint(tmp_path/'checkpoint.pt')['epoch'] == 1
    assert tmp_files(tmp_path) == []
    with pytest.raises(OSError, match='no space left on device while writing'):   # the same for bytes written through atomic_write directly
        atomic_write(tmp_path/'x.bin', lambda f: f.write(b'abc'))
    assert not (tmp_path/'x.bin').exists() and tmp_files(tmp_path) == []

def test_disk_full_in_reproduce_writer_keeps_previous_file(tmp_path, monkeypatch):
    "The one writer of tables, error.json and pending.json (ltpaper.files): a failed write leaves the old file and no temp file."
    f = tmp_path/'table.md'
    atomic_write(f, 'old table\n')
    monkeypatch.setattr(os, 'replace', _enospc_for('table.md', os.replace))
    with pytest.raises(OSError) as ei: atomic_write(f, 'new table\n' * 1000)
    assert ei.value.errno == errno.ENOSPC
    assert f.read_text() == 'old table\n' and tmp_files(tmp_path) == []


# ---------------------------------------------------------------- `ltpaper reproduce`: SIGKILL mid-table, a row that raises, rerun
TABLE = """\
table: faults
title: "fault injection: two rows that train, one that diverges"
seeds: [0]
methods:
  softmax: {label: Softmax, loss: softmax}
  seesaw:  {label: Seesaw, loss: seesaw}
  diverge: {label: Diverges, loss: softmax}
row_name: "{method}-if{imbalance_factor}"
grid:
  - {dataset: [fmnist_lt], imbalance_factor: [100], method: [softmax]}
  - {dataset: [fmnist_lt], imbalance_factor: [100], method: [seesaw], train: {epochs: 3, limit_train: 1500}}
  - {dataset: [fmnist_lt], imbalance_factor: [100], method: [diverge], train: {lr: 1.0e+30, grad_clip: 0.0}}
defaults: {momentum: 0.9, keep_checkpoint: false}
profiles:
  smoke: {model: small_resnet, epochs: 1, batch_size: 64, lr: 0.05, warmup_epochs: 0, milestones: [], lr_decay: [],
          grad_clip: 2.0, val_per_class: 0, eval_every: 1, num_workers: 0, limit_train: 200, limit_test: 100, threads: 1}
views:
  - {name: faults, kind: overall, caption: faults, methods: [softmax, seesaw]}
"""

def _kernels_of(pid: int) -> list:
    "Kernel processes started by process `pid` (jupyter_client puts them in a session of their own, JPY_PARENT_PID=pid)."
    out = []
    for d in Path('/proc').iterdir():
        if not d.name.isdigit(): continue
        try: e = (d/'environ').read_bytes().split(b'\0')
        except OSError: continue
        if f'JPY_PARENT_PID={pid}'.encode() in e: out.append(int(d.name))
    return out

@pytest.fixture(scope='module')
def killed_table(tmp_path_factory):
    "`ltpaper reproduce faults` SIGKILLed (its process group and its kernel) after row 1 finished, mid-row 2 (after its first checkpoint)."
    base = tmp_path_factory.mktemp('faults')
    (base/'configs').mkdir(); (base/'configs'/'faults.yaml').write_text(TABLE)
    rr = base/'results'
    e = dict(env(), LTPAPER_CONFIGS_ROOT=str(base/'configs'))
    p = subprocess.Popen([sys.executable, '-m', 'ltpaper.cli', 'reproduce', 'faults', '--profile', 'smoke', '--seeds', '0', '--no-render',
                          '--results-root', str(rr)], env=e, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    ck = rr/'smoke'/'runs'/'faults'/'seesaw-if100'/'seed0'/'checkpoint.pt'
    try:
        deadline = time.time() + 240
        while not ck.exists():
            assert p.poll() is None, p.stdout.read().decode()[-3000:]
            assert time.time() < deadline, 'reproduce did not reach the second row'
            time.sleep(0.02)
        kernels = _kernels_of(p.pid)
        for k in kernels: os.kill(k, signal.SIGKILL)                    # the machine dies: the kernel (own session) ...
        os.killpg(p.pid, signal.SIGKILL)                                # ... and the reproduce process group
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait()
    for k in kernels:
        for _ in range(200):
            if not Path(f'/proc/{k}').exists() or 'Z' in Path(f'/proc/{k}/stat').read_text().split()[2]: break
            time.sleep(0.05)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('LTPAPER_CONFIGS_ROOT', str(base/'configs'))
        yield rr, kernels

def _args(rr, *extra):
    return ['faults', '--profile', 'smoke', '--seeds', '0', '--results-root', str(rr), *extra]

@pytest.mark.slow
def test_reproduce_sigkill_mid_table_then_rerun(killed_table):
    rr, kernels = killed_table
    runs = rr/'smoke'/'runs'/'faults'
    assert kernels, 'the kernel of the interrupted row was not found'
    soft, see = runs/'softmax-if100'/'seed0', runs/'seesaw-if100'/'seed0'
    assert json.loads((soft/'metrics.json').read_text())['status'] == 'complete'
    assert not (see/'metrics.json').exists() and load_checkpoint(see/'checkpoint.pt')['epoch'] in (1, 2)
    # a writer killed mid-write leaves only a hidden temp file: plant half-written ones, they must never count as results
    (see/'.metrics.json.999.tmp').write_text('{"schema": 1, "status": "compl')
    (see/'.checkpoint.pt.999.tmp').write_bytes((see/'checkpoint.pt').read_bytes()[:500])
    code, out, _ = cli(cli_status, _args(rr))
    assert code == 0 and 'done        faults/softmax-if100' in out and 'started     faults/seesaw-if100' in out, out
    assert 'missing     faults/diverge-if100' in out
    ck_epoch = load_checkpoint(see/'checkpoint.pt')
    soft_before = (soft/'metrics.json').read_bytes()
    # rerun: the finished row is skipped, the interrupted row resumes from its checkpoint, the diverging row fails alone
    code, out, err = cli(cli_reproduce, _args(rr, '--no-render'))
    assert code == 1 and '1 already done, 2 to run' in out and '1 run(s) finished, 1 skipped (done), 1 failed' in out, out + err
    assert (soft/'metrics.json').read_bytes() == soft_before
    m = json.loads((see/'metrics.json').read_text())
    assert m['status'] == 'complete' and [h['epoch'] for h in m['history']] == [1, 2, 3]
    assert m['history'][:ck_epoch['epoch']] == ck_epoch['history']     # resumed: the epochs before the kill were not retrained
    assert not (see/'checkpoint.pt').exists()                          # keep_checkpoint: false
    # the row that raised: error.json (naming epoch and step) + the executed notebook, the others finished
    d = runs/'diverge-if100'/'seed0'
    info = json.loads((d/'error.json').read_text())
    assert info['type'] == 'PapermillExecutionError' and info['error'].startswith('NonFiniteLossError')
    assert 'epoch 1/1, step ' in info['error'] and 'none (first epoch)' in info['error'] and '\n' not in info['error']
    assert Path(info['executed_notebook']).is_file() and 'NonFiniteLossError' in Path(info['executed_notebook']).read_text()
    assert 'FAILED faults/diverge-if100 seed0: NonFiniteLossError' in err and not (d/'metrics.json').exists()
    # a rerun would run only the failed row
    code, out, _ = cli(cli_reproduce, _args(rr, '--no-render', '--dry-run'))
    assert code == 0 and [l.split()[0] for l in out.splitlines()] == ['skip', 'skip', 'run'] and '[failed]' in out.splitlines()[2]


@pytest.mark.slow
def test_truncated_metrics_reported_corrupt_and_rerun(killed_table):
    rr, _ = killed_table
    m = rr/'smoke'/'runs'/'faults'/'softmax-if100'/'seed0'/'metrics.json'
    if not m.exists(): pytest.skip('needs the finished softmax row')
    m.write_text(m.read_text()[:200])                                  # a half-written metrics.json, by hand
    code, out, _ = cli(cli_status, _args(rr, '--rows', 'softmax-if100'))
    assert code == 0 and 'corrupt     faults/softmax-if100' in out and str(m) in out, out
    code, out, _ = cli(cli_reproduce, _args(rr, '--rows', 'softmax-if100', '--no-render', '--dry-run'))
    assert code == 0 and out.startswith('run  faults/softmax-if100 seed0 [corrupt]'), out
    ran = []
    def fake_run(job, **kw):                                            # the rerun redoes exactly that row (not a real kernel: time)
        ran.append(job.row); R.fake_metrics(job)
        return dict(table=job.table, row=job.row, seed=job.seed, state='done', executed=job.executed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L, 'run_job', fake_run)
        code, out, _ = cli(cli_reproduce, _args(rr, '--no-render', '--rows', 'softmax-if100,seesaw-if100'))
    assert code == 0 and ran == ['softmax-if100'] and f'{m} is corrupt' in out and 'rerunning' in out, out
    assert R.read_metrics(m)['status'] == 'complete'


def test_killed_reproduce_leaves_no_worker_behind(tmp_path):
    "SIGKILL of `ltpaper reproduce --jobs 2`: its worker processes notice and exit (their kernels follow)."
    import signal, subprocess, sys, time
    env = {k: v for k, v in os.environ.items() if not k.startswith('LTPAPER_')}   # the module's `faults` table env stays out
    env['OMP_NUM_THREADS'] = '1'
    p = subprocess.Popen([sys.executable, '-m', 'ltpaper.cli', 'reproduce', 'fmnist_lt', '--profile', 'smoke', '--jobs', '2',
                          '--rows', 'softmax-if100,focal-if100', '--seeds', '0', '--no-render', '--results-root', str(tmp_path)],
                         env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / 'stderr.log', 'w'))
    kids, t0 = [], time.time()
    while time.time() - t0 < 300 and len(kids) < 2 and p.poll() is None:   # imports are slow on a loaded 2-core machine
        time.sleep(0.5)
        kids = [int(x) for x in subprocess.run(['pgrep', '-P', str(p.pid)], capture_output=True, text=True).stdout.split()]
    assert len(kids) >= 2, f"the two workers never started (exit {p.poll()}): {(tmp_path / 'stderr.log').read_text()[-1500:]}"
    p.send_signal(signal.SIGKILL); p.wait()
    t0 = time.time()
    while time.time() - t0 < 60 and any(os.path.exists(f'/proc/{k}') and open(f'/proc/{k}/stat').read().split()[2] != 'Z' for k in kids):
        time.sleep(0.5)
    alive = [k for k in kids if os.path.exists(f'/proc/{k}') and open(f'/proc/{k}/stat').read().split()[2] != 'Z']
    assert not alive, f'workers still running after their reproduce was killed: {alive}'
