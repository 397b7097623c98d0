"""The `ltpaper` command as a user meets it: `train --help` documents every flag and lists the valid names, `train`
refuses an out-dir holding another config's run unless `--force`, `reproduce` ends by naming what it wrote."""
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from ltpaper.cli import cli_reproduce, cli_train, train_parser
from ltpaper.config import TrainConfig, config_hash
from ltpaper.data import DATASETS
from ltpaper.losses import LOSSES
from ltpaper.models import MODELS
from ltpaper.pipeline.runs import fake_metrics, output_roots, plan_jobs

from helpers import FMNIST, cli

torch.set_num_threads(1)
need_fmnist = pytest.mark.skipif(not (FMNIST/'train-images-idx3-ubyte.gz').is_file(), reason="Debian's dataset-fashion-mnist not installed")

SMOKE = ['--dataset', 'fmnist_lt', '--model', 'small_resnet', '--epochs', '1', '--warmup-epochs', '0', '--milestones', '',
         '--lr-decay', '', '--limit-train', '200', '--limit-test', '50', '--device', 'cpu', '--threads', '1', '--no-progress']


# ---------------------------------------------------------------- ltpaper train --help
def test_train_help_has_a_line_per_flag_and_the_valid_names():
    code, out, err = cli(cli_train, ['--help'])
    assert code == 0 and err == ''
    for f in fields(TrainConfig):
        assert '--' + f.name.replace('_', '-') in out, f.name
    assert '--force' in out
    for action in train_parser()._actions:
        assert action.help and not action.help.startswith('(default'), action.dest      # words, not only a default
    flat = ' '.join(out.split())
    for names in (LOSSES, DATASETS, MODELS):
        assert 'one of: ' + ', '.join(sorted(names)) in flat


# ---------------------------------------------------------------- ltpaper train into an occupied out-dir
def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}

def test_train_refuses_another_configs_metrics(tmp_path):
    (tmp_path/'metrics.json').write_text(json.dumps(dict(config_hash='0123456789ab', status='complete')))
    before = _snapshot(tmp_path)
    code, out, err = cli(cli_train, SMOKE + ['--out-dir', str(tmp_path)])
    assert (code, out, err.count('\n')) == (2, '', 1), err
    assert err.startswith('ltpaper train: error: ') and 'metrics.json holds another run (config 0123456789ab' in err and '--force' in err
    assert _snapshot(tmp_path) == before                                       # untouched

def test_train_refuses_another_configs_or_unreadable_checkpoint(tmp_path):
    torch.save(dict(config_hash='feedfacecafe'), tmp_path/'checkpoint.pt')
    code, _, err = cli(cli_train, SMOKE + ['--out-dir', str(tmp_path)])
    assert code == 2 and 'checkpoint.pt holds another run (config feedfacecafe' in err
    (tmp_path/'checkpoint.pt').write_bytes(b'\x00garbage')
    code, _, err = cli(cli_train, SMOKE + ['--out-dir', str(tmp_path), '--resume'])
    assert code == 2 and 'cannot be read' in err and err.count('\n') == 1

def test_train_accepts_its_own_config(tmp_path):
    "A metrics.json of the same config is no conflict (rerun / resume, as before)."
    from ltpaper.cli import _check_out_dir
    from ltpaper.cli import _parse_train
    c, force = _parse_train(SMOKE + ['--out-dir', str(tmp_path)])
    (tmp_path/'metrics.json').write_text(json.dumps(dict(config_hash=config_hash(c))))
    assert force is False and _check_out_dir(c) is None

@need_fmnist
def test_train_force_replaces_the_other_run(tmp_path):
    (tmp_path/'metrics.json').write_text(json.dumps(dict(config_hash='0123456789ab')))
    code, out, err = cli(cli_train, SMOKE + ['--out-dir', str(tmp_path), '--force'])
    assert code == 0 and 'last top-1' in out, err
    m = json.loads((tmp_path/'metrics.json').read_text())
    assert m['config_hash'] != '0123456789ab' and m['status'] == 'complete'


# ---------------------------------------------------------------- the end of ltpaper reproduce
def test_reproduce_ends_with_what_it_wrote_and_the_next_command(tmp_path, monkeypatch):
    import ltpaper.pipeline.reproduce as rp
    for j in plan_jobs('fmnist_lt', 'smoke', rows='softmax-if100', seeds=[0], results_root=tmp_path):
        fake_metrics(j)
    roots = output_roots('smoke', tmp_path)                                  # tmp_path/smoke/: the profile's folder
    roots['tables'].mkdir(parents=True)
    (roots['tables']/'unrelated.md').write_text('not rewritten')
    def fake_render(table, profile, results_root=None, seeds=None, **kw):   # stands in for the paper notebook (11 s)
        r = output_roots(profile, results_root)
        for kind, name in (('tables', f'{table}.md'), ('tables', f'{table}.csv'), ('figures', f'{table}_per_class.png')):
            r[kind].mkdir(parents=True, exist_ok=True)
            (r[kind]/name).write_text('x')
        out = r['results']/'executed'/'paper'/f'{table}.ipynb'
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text('{}')
        return out
    monkeypatch.setattr(rp, 'render', fake_render)
    code, out, err = cli(cli_reproduce, ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0',
                                         '--results-root', str(tmp_path)])
    assert code == 0, err
    t, f = roots['tables'], roots['figures']
    assert f"tables: {t/'fmnist_lt.csv'}, {t/'fmnist_lt.md'}" in out, out
    assert f"figures: {f/'fmnist_lt_per_class.png'}" in out and 'unrelated.md' not in out
    assert f"next: cat {t/'fmnist_lt.md'}" in out


def test_slurm_launcher_without_slurm_is_refused_up_front(tmp_path, monkeypatch):
    "--launcher slurm on a machine without sbatch: one line, exit 2, before any work (the local submitit test sets the cluster)."
    from ltpaper.cli import cli_reproduce
    monkeypatch.delenv('LTPAPER_SUBMITIT_CLUSTER', raising=False)
    monkeypatch.setenv('PATH', str(tmp_path))                             # no sbatch anywhere
    code, out, err = cli(cli_reproduce, ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0',
                                         '--launcher', 'slurm', '--no-render', '--results-root', str(tmp_path/'r')])
    assert code == 2 and "no `sbatch` on PATH" in err and err.count('\n') == 1, err
    assert not (tmp_path/'r').exists()


# ---------------------------------------------------------------- ltpaper --help
def test_help_lists_the_tables_profiles_and_examples():
    import subprocess, sys
    from ltpaper.cli import EXAMPLES
    from ltpaper.settings import PROFILES
    from ltpaper.pipeline.tables import list_tables
    from helpers import env
    p = subprocess.run([sys.executable, '-m', 'ltpaper.cli', '--help'], capture_output=True, text=True, env=env(), timeout=60)
    assert p.returncode == 0 and p.stderr == '', p.stderr
    assert 'tables (configs/<table>.yaml): ' + ', '.join(list_tables()) in p.stdout and 'table1' in p.stdout
    assert 'profiles: ' + ', '.join(PROFILES) in p.stdout
    assert 'examples:' in p.stdout and len(EXAMPLES) >= 4 and all(c in p.stdout for c, _ in EXAMPLES)
    assert all(c.split()[1] in {'train', 'reproduce', 'status', 'fetch', 'verify', 'compare'} for c, _ in EXAMPLES)


# ---------------------------------------------------------------- ltpaper train says where its results went
@need_fmnist
def test_train_ends_by_printing_where_its_metrics_are(tmp_path):
    code, out, err = cli(cli_train, SMOKE + ['--out-dir', str(tmp_path/'run')])
    assert code == 0, err
    last = out.splitlines()[-1]
    assert last == f"metrics: {tmp_path/'run'/'metrics.json'}" and (tmp_path/'run'/'metrics.json').is_file(), out


# ---------------------------------------------------------------- reproduce refuses a missing dataset before any run
def test_reproduce_refuses_a_missing_dataset_before_the_first_run(tmp_path, monkeypatch):
    import papermill
    monkeypatch.setenv('LTPAPER_DATA_ROOT', str(tmp_path/'no-data'))
    monkeypatch.setattr(papermill, 'execute_notebook', lambda *a, **k: pytest.fail('papermill started'))
    rr = tmp_path/'r'
    # the fmnist row (Debian's copy or absent) comes first, the CIFAR-10 row must be named either way
    argv = ['table1', '--profile', 'smoke', '--rows', 'cifar10_lt-softmax-if10,tinyimagenet_lt-softmax-if10', '--seeds', '0',
            '--results-root', str(rr)]
    code, out, err = cli(cli_reproduce, argv)
    assert (code, out, err.count('\n')) == (2, '', 1), err
    assert err.startswith('ltpaper reproduce: error: table1/cifar10_lt-softmax-if10 needs dataset cifar10_lt') and \
        '`ltpaper fetch cifar10_lt`' in err, err
    assert not rr.exists()                                                   # nothing planned on disk, nothing run
    code, out, _ = cli(cli_reproduce, argv + ['--dry-run'])                  # the plan can still be listed
    assert code == 0 and out.count('run ') == 2


# ---------------------------------------------------------------- failures are printed before "next: ..."
def test_failed_lines_come_before_the_next_command(tmp_path, monkeypatch):
    import contextlib, io
    import ltpaper.pipeline.launch as L
    import ltpaper.pipeline.reproduce as rp
    def fake_run(job, **kw):                                                 # one row fails, one finishes
        if job.row == 'focal-if100':
            return dict(table=job.table, row=job.row, seed=job.seed, state='failed', error='ValueError: boom', executed=job.executed)
        fake_metrics(job)
        return dict(table=job.table, row=job.row, seed=job.seed, state='done', executed=job.executed)
    def fake_render(table, profile, results_root=None, seeds=None, **kw):
        r = output_roots(profile, results_root)
        r['tables'].mkdir(parents=True, exist_ok=True)
        (r['tables']/f'{table}.md').write_text('x')
        return None
    monkeypatch.setattr(L, 'run_job', fake_run)
    monkeypatch.setattr(rp, 'render', fake_render)
    both = io.StringIO()                                                     # stdout and stderr as a terminal shows them
    with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
        code = cli_reproduce(['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100,focal-if100', '--seeds', '0',
                              '--results-root', str(tmp_path)])
    lines = both.getvalue().splitlines()
    failed = [i for i, l in enumerate(lines) if l.startswith('FAILED fmnist_lt/focal-if100 seed0: ValueError: boom')]
    nxt = [i for i, l in enumerate(lines) if l.startswith('next: ')]
    assert code == 1 and failed and nxt and failed[0] < nxt[0] == len(lines) - 1, lines
