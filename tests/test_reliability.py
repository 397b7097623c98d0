"""Reliability of `ltpaper reproduce` / `status` and the table configs (issue: no false success, no result destroyed
before its replacement exists, every bad file named). Faults are real where they can be without privileges: a run
folder that cannot be created (a file stands where the folder goes: `mkdir` fails even for root), a full disk at the
exact write (`os.replace` raising ENOSPC, as tests/test_faults.py does), SIGINT delivered to this process, and
hand-edited files. The notebook runs are stand-ins (papermill patched or `ltpaper.pipeline.launch.run_job` replaced) where
the test is about bookkeeping, so each test takes seconds."""
import errno, json, os, signal, socket, subprocess, sys
from pathlib import Path

import nbformat
import pytest

import ltpaper.pipeline.runs as RUNS
from ltpaper.cli import cli_reproduce, cli_status, cli_train
from ltpaper.pipeline.reproduce import reproduce
from ltpaper.files import atomic_write
from ltpaper.pipeline.runs import fake_metrics, job_state, output_roots, plan_jobs, run_job
from ltpaper.pipeline.tables import expand_table, load_table

from helpers import cli

ROWS = 'softmax-if100,focal-if100'


def _args(rr, *extra, rows=ROWS):
    return ['fmnist_lt', '--profile', 'smoke', '--rows', rows, '--seeds', '0', '--no-render', '--results-root', str(rr), *extra]


def _sargs(rr, rows=ROWS):
    return ['fmnist_lt', '--profile', 'smoke', '--rows', rows, '--seeds', '0', '--results-root', str(rr)]


def _jobs(rr, rows=ROWS):
    return plan_jobs('fmnist_lt', 'smoke', rows=rows, seeds=[0], results_root=rr)


def _block_folders(rr):
    "A file where each row's folder goes: the run folder cannot be created (a full or read-only parent looks the same to ltpaper)."
    for j in _jobs(rr):
        Path(j.out_dir).parent.parent.mkdir(parents=True, exist_ok=True)
        Path(j.out_dir).parent.write_text('not a folder')


def _enospc_for(*names):
    real = os.replace
    def replace(src, dst, *a, **k):
        if Path(dst).name in names: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)
    return replace


def _papermill_raises(monkeypatch, exc, seen=None):
    import papermill
    def run(nb, executed, **kw):
        if seen is not None: seen.append(Path(kw['cwd']).parent.name)
        raise exc() if isinstance(exc, type) else exc
    monkeypatch.setattr(papermill, 'execute_notebook', run)


# ---------------------------------------------------------------- 1. every planned job accounted for
@pytest.mark.parametrize('jobs', ['1', '2'])
def test_unwritable_run_folders_fail_counted_and_exit_nonzero(tmp_path, jobs):
    "Sequential: no traceback; --jobs 2: no '0 failed' and exit 0. Each row fails, named, and the exit code says so."
    _block_folders(tmp_path)
    code, out, err = cli(cli_reproduce, _args(tmp_path, '--jobs', jobs))
    assert code == 1 and '0 run(s) finished, 0 skipped (done), 2 failed' in out, out + err
    for row in ROWS.split(','):
        assert f'FAILED fmnist_lt/{row} seed0:' in err and str(tmp_path/'smoke'/'runs'/'fmnist_lt'/row) in err, err


def test_failure_that_cannot_be_recorded_is_still_reported(tmp_path, monkeypatch):
    "Disk full at pending.json and at error.json: the row fails, the summary says error.json could not be written, no lock left."
    _papermill_raises(monkeypatch, RuntimeError('never reached'))
    monkeypatch.setattr(os, 'replace', _enospc_for('pending.json', 'error.json'))
    code, out, err = cli(cli_reproduce, _args(tmp_path))
    assert code == 1 and '2 failed' in out, out + err
    assert err.count('could not be written') == 2 and 'no space left on device while writing' in err, err
    for j in _jobs(tmp_path):
        assert not (Path(j.out_dir)/'run.lock').exists() and not (Path(j.out_dir)/'error.json').exists()


def test_a_job_the_launcher_loses_is_a_failure(tmp_path, monkeypatch):
    "A launcher that returns fewer results than jobs (a worker thread that died) cannot make the batch look successful."
    import ltpaper.pipeline.reproduce as REP
    monkeypatch.setattr(REP, 'execute_jobs', lambda jobs, *a, **k: [])
    res = reproduce('fmnist_lt', 'smoke', rows=ROWS, seeds=[0], results_root=tmp_path, render_outputs=False, progress=False,
                    log=lambda *a: None)
    assert [f['row'] for f in res['failed']] == ROWS.split(',') and all('no result came back' in f['error'] for f in res['failed'])


# ---------------------------------------------------------------- 2. --force replaces a result only when the new run succeeded
def _done(rr):
    "Both rows finished (stand-in metrics); their bytes."
    return {j.row: fake_metrics(j) and (Path(j.out_dir)/'metrics.json').read_bytes() for j in _jobs(rr)}


def _unchanged(rr, before):
    for j in _jobs(rr):
        assert (Path(j.out_dir)/'metrics.json').read_bytes() == before[j.row], j.row
        assert job_state(j)[0] == 'done' and not (Path(j.out_dir)/'run.lock').exists()
        assert not (Path(j.out_dir)/RUNS._KEPT).exists()


def test_sigint_during_force_keeps_every_previous_result(tmp_path, monkeypatch):
    "Ctrl-C (a real SIGINT to this process) during the first of two forced rows: both metrics.json survive."
    before = _done(tmp_path)
    import papermill
    def interrupted(nb, executed, **kw):
        assert not (Path(kw['cwd'])/'metrics.json').exists()          # kept aside while the rerun runs ...
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(papermill, 'execute_notebook', interrupted)
    # the handler this test relies on: Python installs it only when SIGINT is not ignored at start, and a shell that
    # runs `make test &` (or under `trap '' INT`, nohup, many CI runners) starts it ignored
    prev = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce('fmnist_lt', 'smoke', rows=ROWS, seeds=[0], results_root=tmp_path, force=True, render_outputs=False,
                      progress=False, log=lambda *a: None)
    finally: signal.signal(signal.SIGINT, prev)
    _unchanged(tmp_path, before)                                          # ... and back after the interrupt


def test_force_whose_run_fails_keeps_the_finished_result(tmp_path, monkeypatch):
    "A forced rerun that fails (here: its dataset is absent) records error.json and leaves the finished metrics.json in place."
    before = _done(tmp_path)
    seen = []
    _papermill_raises(monkeypatch, FileNotFoundError('Fashion-MNIST not found under /nowhere'), seen)
    code, out, err = cli(cli_reproduce, _args(tmp_path, '--force'))
    assert code == 1 and '2 failed' in out and seen == ROWS.split(','), out + err
    _unchanged(tmp_path, before)
    for j in _jobs(tmp_path): assert 'Fashion-MNIST not found' in json.loads((Path(j.out_dir)/'error.json').read_text())['error']


def test_force_succeeds_then_replaces(tmp_path, monkeypatch):
    "The other half: a forced rerun that succeeds replaces the result and drops the kept copy."
    _done(tmp_path)
    import papermill
    def new_run(nb, executed, **kw):
        job = next(j for j in _jobs(tmp_path) if j.out_dir == kw['cwd'])
        fake_metrics(job, top1=77.0)
    monkeypatch.setattr(papermill, 'execute_notebook', new_run)
    code, out, err = cli(cli_reproduce, _args(tmp_path, '--force'))
    assert code == 0 and '2 run(s) finished' in out, out + err
    for j in _jobs(tmp_path):
        assert not (Path(j.out_dir)/RUNS._KEPT).exists() and job_state(j)[0] == 'done'
        assert json.loads((Path(j.out_dir)/'metrics.json').read_text())['last']['top1'] > 60


def test_force_on_a_row_held_elsewhere_touches_nothing(tmp_path, monkeypatch):
    "--force never clears a row whose lock another live process holds (its pending.json and checkpoint stay)."
    j = _jobs(tmp_path, 'softmax-if100')[0]
    out = Path(j.out_dir)
    out.mkdir(parents=True)
    _papermill_raises(monkeypatch, AssertionError('must not run'))
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out/'run.lock').write_text(json.dumps(dict(pid=holder.pid, host=socket.gethostname(), since='t0')))
        (out/'pending.json').write_text(json.dumps({'resume_key': 'its'}))
        (out/'checkpoint.pt').write_text('its checkpoint')
        code, _, err = cli(cli_reproduce, _args(tmp_path, '--force', rows='softmax-if100'))
        assert code == 1 and 'being run by another ltpaper process' in err, err
        assert json.loads((out/'pending.json').read_text()) == {'resume_key': 'its'} and (out/'checkpoint.pt').read_text() == 'its checkpoint'
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize('rows, msg', [('', 'names no row'), (' , ', 'names no row'),
                                       ('softmax-if100,sesaw-if100', "'sesaw-if100' matches no row")])
def test_rows_that_select_nothing_or_misspell_are_refused(tmp_path, rows, msg):
    "An empty --rows (an unset shell variable) never means every row (with --force: a wiped table); a misspelt glob is named."
    before = _done(tmp_path)
    for f, args in ((cli_reproduce, _args(tmp_path, '--force', rows=rows)), (cli_status, _sargs(tmp_path, rows))):
        code, out, err = cli(f, args)
        assert code == 2 and msg in err and err.count('\n') == 1, err
    _unchanged(tmp_path, before)


# ---------------------------------------------------------------- 3. every file read is checked, a bad one named
@pytest.mark.parametrize('edit', [dict(config='oops'), dict(last=None), dict(top1='19.67'), dict(history='x'), dict(class_counts=[1, 'a'])])
def test_wrong_typed_metrics_is_corrupt_not_a_traceback(tmp_path, edit):
    "Valid JSON of the wrong shape: status and reproduce --dry-run name the file and call the row corrupt (rerun)."
    j = _jobs(tmp_path, 'softmax-if100')[0]
    rec = fake_metrics(j)
    if 'top1' in edit: rec['last']['top1'] = edit['top1']
    else: rec.update(edit)
    m = Path(j.out_dir)/'metrics.json'
    m.write_text(json.dumps(rec))
    code, out, err = cli(cli_status, _sargs(tmp_path, 'softmax-if100'))
    assert code == 0 and out.startswith('corrupt     fmnist_lt/softmax-if100') and str(m) in out, out + err
    code, out, err = cli(cli_reproduce, _args(tmp_path, '--dry-run', rows='softmax-if100'))
    assert code == 0 and out.startswith('run  fmnist_lt/softmax-if100 seed0 [corrupt]'), out + err


@pytest.mark.parametrize('name, text', [('run.lock', '[]'), ('run.lock', '{"pid": [], "host": {}}'), ('error.json', '[]'),
                                        ('error.json', '"oops"'), ('pending.json', '[]')])
def test_hand_edited_bookkeeping_files_never_crash(tmp_path, monkeypatch, name, text):
    "run.lock / error.json / pending.json that are JSON but not the expected object: status works, a rerun records its own failure."
    j = _jobs(tmp_path, 'softmax-if100')[0]
    out = Path(j.out_dir)
    out.mkdir(parents=True)
    (out/name).write_text(text)
    (out/'checkpoint.pt').write_text('a checkpoint of unknown config')
    code, o, err = cli(cli_status, _sargs(tmp_path, 'softmax-if100'))
    assert code == 0 and 'fmnist_lt/softmax-if100' in o, o + err
    if name == 'run.lock': os.utime(out/name, (0, 0))                     # an old unreadable lock is stale: taken over
    _papermill_raises(monkeypatch, RuntimeError('kernel died'))
    res = run_job(j)
    assert res['state'] == 'failed' and res['error'] == 'RuntimeError: kernel died', res
    assert not (out/'checkpoint.pt').exists()                             # pending.json did not name this config


def test_figures_are_written_atomically_0644(tmp_path, monkeypatch):
    "A full disk while re-saving a figure leaves the previous PNG and PDF whole (and no temp file); figures are 0644."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from ltpaper.pipeline.figures import save_figure
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path, 'fig')
    before = [p.read_bytes() for p in paths]
    assert all(oct(p.stat().st_mode & 0o777) == '0o644' for p in paths)
    ax.plot([0, 1], [1, 0])
    monkeypatch.setattr(os, 'replace', _enospc_for('fig.png', 'fig.pdf'))
    with pytest.raises(OSError, match='no space left on device while writing'):
        save_figure(fig, tmp_path, 'fig')
    plt.close(fig)
    assert [p.read_bytes() for p in paths] == before and sorted(p.name for p in tmp_path.iterdir()) == ['fig.pdf', 'fig.png']


def test_outputs_are_0644(tmp_path):
    "Tables, error.json, pending.json, metrics.json stand-ins: every file the atomic writer makes is readable by all."
    atomic_write(tmp_path/'t.md', '| a |\n')
    assert oct((tmp_path/'t.md').stat().st_mode & 0o777) == '0o644'


# ---------------------------------------------------------------- 4. configs: one-line errors before any work
TABLE = """\
table: {name}
title: t
seeds: {seeds}
methods:
  softmax: {{label: Softmax, loss: softmax}}
  focal: {{label: Focal, loss: focal}}
row_name: "{row_name}"
grid:
  - {{dataset: [fmnist_lt], imbalance_factor: [100], method: [softmax, focal]}}
defaults: {{momentum: 0.9}}
profiles:
  smoke: {{model: small_resnet, batch_size: 64, lr: 0.05, limit_train: 200, limit_test: 100, {schedule}}}
views:
  - {{name: t, kind: overall, caption: t, methods: [softmax]}}
"""
SCHEDULE = 'epochs: 2, milestones: [1], lr_decay: [0.1], warmup_epochs: 1'


def _table(root, name='t', seeds='[0]', row_name='{method}-if{imbalance_factor}', schedule=SCHEDULE, extra=''):
    root.mkdir(exist_ok=True)
    (root/f'{name}.yaml').write_text(TABLE.format(name=name, seeds=seeds, row_name=row_name, schedule=schedule) + extra)
    return root


@pytest.mark.parametrize('kw, msg', [
    (dict(schedule='epochs: 2'), "['milestones', 'lr_decay', 'warmup_epochs'] not set"),
    (dict(schedule='milestones: [1], lr_decay: [0.1], warmup_epochs: 0'), "['epochs'] not set"),
    (dict(schedule='epochs: 2, milestones: [160, 180], lr_decay: [0.1, 0.01], warmup_epochs: 0'), 'milestones [160, 180] lie beyond epochs=2'),
    (dict(schedule='epochs: 2, milestones: [1], lr_decay: [0.1], warmup_epochs: 5'), 'warmup_epochs=5 must be smaller than epochs=2'),
    (dict(row_name='{method}-{imbalance}'), "row_name '{method}-{imbalance}' uses unknown field(s) ['imbalance']"),
    (dict(seeds='[-1]'), 'seeds must be a list of integers in [0, 2**32)'),
    (dict(seeds='[4294967296]'), 'seeds must be a list of integers in [0, 2**32)'),
    (dict(extra='methods:\n  x: {loss: softmax}\n'), "key 'methods' appears twice in one mapping"),
])
def test_bad_table_configs_are_one_line_errors_before_any_work(tmp_path, monkeypatch, kw, msg):
    root = _table(tmp_path/'configs', **kw)
    monkeypatch.setenv('LTPAPER_CONFIGS_ROOT', str(root))
    for extra in (['--dry-run'], []):
        code, out, err = cli(cli_reproduce, ['t', '--profile', 'smoke', '--no-render', '--results-root', str(tmp_path/'r'), *extra])
        assert code == 2 and msg in err and err.count('\n') == 1 and 'Traceback' not in err, err
    assert not (tmp_path/'r').exists()


def test_duplicate_method_key_is_refused(tmp_path):
    "The issue's case: a second `softmax:` method (focal) silently won, so row softmax-if100 trained focal."
    root = tmp_path/'configs'
    _table(root)
    text = (root/'t.yaml').read_text().replace('  focal: {label: Focal, loss: focal}', '  softmax: {label: Focal, loss: focal}')
    (root/'t.yaml').write_text(text)
    with pytest.raises(ValueError, match=r"key 'softmax' appears twice in one mapping \(lines 5 and 6\)"):
        load_table('t', root)


def test_base_cycle_is_a_one_line_error(tmp_path):
    root = _table(tmp_path/'configs', name='a', extra='base: b\n')
    _table(root, name='b', extra='base: a\n')
    with pytest.raises(ValueError, match=r'`base` tables form a cycle \(a -> b -> a\)'):
        load_table('a', root)


def test_a_good_table_still_expands(tmp_path):
    root = _table(tmp_path/'configs')
    rows = expand_table('t', 'smoke', root)
    assert [r.name for r in rows] == ['softmax-if100', 'focal-if100'] and rows[0].train['epochs'] == 2


def test_seed_beyond_2_32_fails_before_data_and_leaves_no_out_dir(tmp_path):
    out = tmp_path/'run'
    code, _, err = cli(cli_train, ['--dataset', 'fmnist_lt', '--epochs', '1', '--seed', str(2**32), '--device', 'cpu', '--data-root',
                                   str(tmp_path/'nodata'), '--out-dir', str(out)])
    assert code == 2 and 'TrainConfig.seed=4294967296' in err and err.count('\n') == 1, err
    assert not out.exists()


# ---------------------------------------------------------------- CLI points of the readers' issue
def test_one_meaning_for_every_root(monkeypatch, tmp_path):
    "A root named by flag, variable or settings.ini is the default profile's folder; any other profile uses <root>/<profile>/."
    for k in ('LTPAPER_RESULTS_ROOT', 'LTPAPER_TABLES_ROOT', 'LTPAPER_FIGURES_ROOT'): monkeypatch.delenv(k, raising=False)
    by_flag = {p: output_roots(p, tmp_path/'R') for p in ('smoke', 'paper', 'cpu')}
    monkeypatch.setenv('LTPAPER_RESULTS_ROOT', str(tmp_path/'R'))
    assert {p: output_roots(p) for p in by_flag} == by_flag
    assert by_flag['paper'] == dict(results=tmp_path/'R'/'paper', tables=tmp_path/'R'/'paper'/'tables', figures=tmp_path/'R'/'paper'/'figures')
    assert by_flag['cpu'] == dict(results=tmp_path/'R', tables=tmp_path/'R'/'tables', figures=tmp_path/'R'/'figures')
    (tmp_path/'settings.ini').write_text(f"[ltpaper]\nresults_root = {tmp_path/'R'}\n")       # settings.ini: the same folders
    monkeypatch.delenv('LTPAPER_RESULTS_ROOT')
    monkeypatch.setenv('LTPAPER_SETTINGS', str(tmp_path/'settings.ini'))
    assert {p: output_roots(p) for p in by_flag} == by_flag
    monkeypatch.setenv('LTPAPER_TABLES_ROOT', str(tmp_path/'T'))                              # tables and figures roots: the same rule
    monkeypatch.setenv('LTPAPER_FIGURES_ROOT', str(tmp_path/'F'))
    for p, sub in (('smoke', 'smoke'), ('paper', 'paper'), ('cpu', '')):
        assert (output_roots(p)['tables'], output_roots(p)['figures']) == (tmp_path/'T'/sub, tmp_path/'F'/sub), p


def test_committed_layout_under_settings_ini(monkeypatch):
    "settings.ini alone: cpu in results/ with the top-level tables/ and figures/, every other profile in results/<profile>/."
    from ltpaper.pipeline.tables import project_root
    for k in ('LTPAPER_RESULTS_ROOT', 'LTPAPER_TABLES_ROOT', 'LTPAPER_FIGURES_ROOT', 'LTPAPER_SETTINGS', 'LTPAPER_PROFILE'):
        monkeypatch.delenv(k, raising=False)
    root = project_root()
    assert output_roots('cpu') == dict(results=root/'results', tables=root/'tables', figures=root/'figures')
    for p in ('paper', 'mid', 'long', 'smoke'):
        assert output_roots(p) == {k: root/'results'/p/v for k, v in (('results', ''), ('tables', 'tables'), ('figures', 'figures'))}


@pytest.mark.slow
def test_reproduce_with_flag_then_status_by_flag_and_by_variable(monkeypatch, tmp_path):
    "One smoke row reproduced into --results-root X (tables and figures roots named by variables): status finds it done"
    "with the flag and with LTPAPER_RESULTS_ROOT=X; the rendered tables and figures are in <root>/smoke/."
    for k in ('LTPAPER_RESULTS_ROOT', 'LTPAPER_SETTINGS', 'LTPAPER_PROFILE'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('LTPAPER_TABLES_ROOT', str(tmp_path/'T'))
    monkeypatch.setenv('LTPAPER_FIGURES_ROOT', str(tmp_path/'F'))
    args = ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0']
    code, out, err = cli(cli_reproduce, args + ['--results-root', str(tmp_path/'X')])
    assert code == 0, out + err
    assert (tmp_path/'X'/'smoke'/'runs'/'fmnist_lt'/'softmax-if100'/'seed0'/'metrics.json').is_file()
    assert (tmp_path/'T'/'smoke'/'fmnist_lt.md').is_file() and (tmp_path/'F'/'smoke'/'fmnist_lt_per_class.png').is_file()
    assert not (tmp_path/'X'/'smoke'/'tables').exists()
    code, out, _ = cli(cli_status, args + ['--results-root', str(tmp_path/'X')])
    assert code == 0 and '1 done' in out and 'missing' not in out, out
    monkeypatch.setenv('LTPAPER_RESULTS_ROOT', str(tmp_path/'X'))
    code, out2, _ = cli(cli_status, args)
    assert code == 0 and out2 == out, out2


def test_no_unencrypted_tcp_kernel_warning(tmp_path, capfd):
    "The papermill kernel runs over IPC: ipykernel's 'Kernel is running over TCP without encryption' never reaches the terminal."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1')])
    nb.metadata['kernelspec'] = dict(name='python3', language='python', display_name='python3')
    path = tmp_path/'nb.ipynb'
    nbformat.write(nb, path)
    j = _jobs(tmp_path, 'softmax-if100')[0]
    res = run_job(j, notebook=path)                                       # runs, then fails: the notebook writes no metrics.json
    assert res['state'] == 'failed' and 'metrics.json' in res['error'] and Path(j.executed).is_file(), res
    cap = capfd.readouterr()
    assert 'without encryption' not in cap.err + cap.out


def test_result_kept_aside_by_a_killed_force_rerun_comes_back(tmp_path):
    "A `--force` rerun SIGKILLed mid-run leaves metrics.previous.json and no lock holder: status puts the result back, still done."
    j = _jobs(tmp_path, 'softmax-if100')[0]
    fake_metrics(j)
    out = Path(j.out_dir)
    before = (out/'metrics.json').read_bytes()
    os.replace(out/'metrics.json', out/RUNS._KEPT)
    code, o, err = cli(cli_status, _sargs(tmp_path, 'softmax-if100'))
    assert code == 0 and o.startswith('done        fmnist_lt/softmax-if100'), o + err
    assert (out/'metrics.json').read_bytes() == before and not (out/RUNS._KEPT).exists()


def test_schema_accepts_what_training_writes(tmp_path):
    "A class without test images has a null per-class accuracy (train writes None for NaN): still a valid, done run."
    j = _jobs(tmp_path, 'softmax-if100')[0]
    rec = fake_metrics(j)
    rec['last']['per_class'][0] = rec['best']['per_class'][0] = None
    (Path(j.out_dir)/'metrics.json').write_text(json.dumps(rec))
    assert job_state(j)[0] == 'done'
