"The benchmark scripts parse their arguments and run (tiny sizes); the GPU check script is valid bash and refuses bad input."
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / 'benchmarks' / 'gpu_check.sh'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable)

def sh(*args):
    return subprocess.run(['bash', str(GPU), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)

def test_gpu_check_is_valid_bash():
    assert subprocess.run(['bash', '-n', str(GPU)]).returncode == 0

def test_gpu_check_dry_run_prints_the_plan():
    r = sh('--dry-run', '--skip', 'paper', '--loss', 'seesaw')
    assert r.returncode == 0, r.stderr
    assert 'paper=skip' in r.stdout and 'loss-of-paper-run=seesaw' in r.stdout and 'dry run' in r.stdout

def test_gpu_check_refuses_bad_arguments():
    for args, msg in [(['--bogus'], "unknown argument '--bogus'"), (['--skip', 'everything'], "unknown step 'everything'"),
                      (['--loss', 'nope'], "unknown loss 'nope'")]:
        r = sh(*args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)

def test_gpu_check_without_gpu_says_so():
    import torch
    if torch.cuda.is_available(): return          # on a GPU machine this would start the real check
    r = sh('--skip', 'cells,loss,throughput,paper')
    assert r.returncode == 3 and 'no CUDA device' in r.stderr

def test_loss_speed_runs_and_writes_ratios(tmp_path):
    out = tmp_path / 'ls.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'loss_speed.py'), '--classes', '10', '--repeats', '2', '--out', str(out)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    names = {row['loss'] for row in res['rows']}
    assert {'cross_entropy', 'ours', 'seesaw', 'ghm'} <= names and all(row['ratio'] > 0 for row in res['rows'])
    assert out.with_suffix('.md').read_text().count('|') > 20

def test_loss_speed_records_its_kernels(tmp_path):
    "The ratios depend on the kernel set: the file says which ran (here: whatever this process runs, pinned or not)."
    out = tmp_path / 'ls.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'loss_speed.py'), '--classes', '10', '--repeats', '2',
                        '--losses', 'ours', '--out', str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads(out.read_text())['meta']
    import torch
    assert meta['capability'] == torch.backends.cpu.get_cpu_capability()     # the child inherits this process's pins
    from ltpaper.numerics import PINS
    assert meta['pins'] == {k: os.environ.get(k) for k in PINS}              # what this process (and the child) ran under
    assert f"ATen kernels {meta['capability']}" in out.with_suffix('.md').read_text()

def test_fused_margin_ce_prototype_matches_autograd_within_rounding(tmp_path):
    "The measured prototype gives `ours`' loss values bit for bit and autograd's gradient to float32 rounding."
    out = tmp_path / 'fm.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'fused_margin_ce.py'), '--classes', '10,100', '--repeats', '4',
                        '--out', str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())['rows']
    assert [row['C'] for row in rows] == [10, 100]
    for row in rows:
        assert row['same_forward'] is True
        # one float32 rounding of a gradient element of size <= max|grad|: at most a few ulps of it
        assert row['max_abs_diff'] <= 4 * 2 ** -23 * row['max_abs_grad'], row
        assert all(v[0] > 0 for v in row['ratio'].values())
    lines = out.with_suffix('.md').read_text().splitlines()
    assert [l.split('|')[1].strip() for l in lines if l.startswith('| 1')] == ['10', '100']

GPR = ROOT / 'benchmarks' / 'gpu_paper_runs.py'

def test_gpu_paper_runs_plans_the_paper_profile_exactly():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    from ltpaper.pipeline.runs import plan_jobs
    from ltpaper.config import TrainConfig
    rows = 'softmax-if100,seesaw-if100,ours-if100'
    want = {j.row: j.config_hash for j in plan_jobs('fmnist_lt', 'paper', rows=rows, seeds=[0], results_root='/tmp/x')}
    got = g.plan(rows, 0, '/tmp/x', 'cuda', '.fmnist')
    assert {j.row: j.config_hash for j in got} == want and all(j.config['epochs'] == 200 and j.config['model'] == 'resnet32' for j in got)
    trial = g.plan('ours-if100', 0, '/tmp/x', 'cpu', '.fmnist', epochs=3)[0]
    assert trial.config_hash != want['ours-if100'] and trial.config['epochs'] == 3
    TrainConfig(**{k: v for k, v in trial.config.items()})          # the trial's schedule is a valid TrainConfig

def test_gpu_paper_runs_without_gpu_or_arguments_says_so():
    import torch
    r = subprocess.run([sys.executable, str(GPR)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and '--out DIR' in r.stderr
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(GPR), '--out', '/tmp/never'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and 'no CUDA device' in r.stderr

def test_gpu_paper_runs_install_takes_paper_runs_only(tmp_path):
    src = tmp_path / 'fetched'; src.mkdir()
    committed = sorted((ROOT / 'results' / 'paper' / 'runs' / 'fmnist_lt').glob('*/seed0/metrics.json'))
    assert committed
    for m in committed: (src / f"fmnist_lt-{m.parent.parent.name}-seed0.metrics.json").write_bytes(m.read_bytes())
    rec = json.loads(committed[0].read_text()); rec['config']['epochs'] = 3          # a trial: another config
    (src / 'fmnist_lt-focal-if100-seed0.metrics.json').write_text(json.dumps(rec))
    (src / 'fmnist_lt-nosuchrow-if100-seed0.metrics.json').write_text(json.dumps(rec))
    env = dict(ENV, LTPAPER_RESULTS_ROOT=str(tmp_path / 'res'))
    r = subprocess.run([sys.executable, str(GPR), '--install', str(src)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'{len(committed)} run(s) installed' in r.stdout and 'skip fmnist_lt-focal-if100' in r.stdout and 'is not a row' in r.stdout
    assert not (tmp_path / 'res' / 'paper' / 'runs' / 'fmnist_lt' / 'focal-if100').exists()
    for m in committed:
        assert (tmp_path / 'res' / 'paper' / 'runs' / 'fmnist_lt' / m.parent.parent.name / 'seed0' / 'metrics.json').read_bytes() == m.read_bytes()

def test_compile_loss_checks_equality_and_writes_ratios(tmp_path):
    out = tmp_path / 'cl.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'compile_loss.py'), '--classes', '10', '--batch', '32', '--repeats', '2',
                        '--device', 'cpu', '--out', str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())['rows']
    assert len(rows) == 1 and rows[0]['C'] == 10 and rows[0]['compiled_ms'] > 0 and rows[0]['speedup'] > 0

def _small(g, monkeypatch):
    "gpu_paper_runs with its plan shrunk to a seconds-long CPU run per job (the scheduling is what is tested)."
    orig = g.plan
    def plan(*a, **k):
        jobs = orig(*a, **k)
        for j in jobs: j.config.update(model='small_resnet', limit_train=500, limit_test=200, val_per_class=20, threads=1)
        return jobs
    monkeypatch.setattr(g, 'plan', plan)

def _ns(tmp_path, **kw):
    import argparse
    base = dict(out=str(tmp_path / 'out'), rows='softmax-if100,seesaw-if100', seeds='0,1', parallel=2, redo=False, deadline_s=600,
                extra_s=0, resume_from=None, data_root='.fmnist', threads=1, epochs=1, commit=None, require_gpu=False, dry_run=False,
                step='eager', step_speed_s=0, mode='processes')
    return argparse.Namespace(**{**base, **kw})

def test_gpu_paper_runs_default_plan_is_the_budget_rows_seed_major():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    from ltpaper.pipeline.tables import load_table
    jobs = g.plan('budget', [0, 1, 2], '/tmp/x', 'cuda', '.fmnist')
    rows = load_table('fmnist_lt')['profiles']['mid']['rows']
    assert [j.seed for j in jobs] == [s for s in (0, 1, 2) for _ in rows]                  # seed-major: a cut-off leaves whole seeds
    assert all(sorted(j.row for j in jobs if j.seed == s) == sorted(rows) for s in (0, 1, 2))
    todo, have = g.to_run(jobs)
    committed = {f"{m.parent.parent.name}-{m.parent.name}" for m in (ROOT / 'results/paper/runs/fmnist_lt').glob('*/seed*/metrics.json')}
    assert {g._name(j) for j in have} == committed & {g._name(j) for j in jobs} and len(todo) + len(have) == len(jobs)
    assert g.to_run(jobs, redo=True) == (jobs, [])
    r = subprocess.run([sys.executable, str(GPR), '--dry-run'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"{len(todo)} to run, {len(have)} committed" in r.stdout, r.stderr[-2000:]

def test_gpu_paper_runs_queues_runs_and_keeps_stopped_ones_for_the_next_window(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    _small(g, monkeypatch)
    s = g.run(_ns(tmp_path))          # 4 trial runs of one epoch, two at a time, on the CPU
    assert [(r['row'], r['seed']) for r in s['rows']] == [('softmax-if100', 0), ('seesaw-if100', 0), ('softmax-if100', 1), ('seesaw-if100', 1)]
    assert all(r['finished'] and r['rc'] == 0 for r in s['rows']), s
    out = tmp_path / 'out'
    assert sorted(p.name for p in out.glob('*.metrics.json')) == sorted(f'fmnist_lt-{r}-seed{k}.metrics.json'
                                                                     for r in ('softmax-if100', 'seesaw-if100') for k in (0, 1))
    # a run stopped at the deadline: its checkpoint (not a result) goes to partial/, and --resume-from continues it
    j = g.plan('softmax-if100', [0], tmp_path / 'w', 'cpu', '.fmnist', epochs=2)[0]
    Path(j.out_dir).mkdir(parents=True); (Path(j.out_dir) / 'checkpoint.pt').write_bytes(b'ck')
    (tmp_path / 'w' / 'softmax-if100-seed0.log').write_text('epoch 1 ...\n')
    row = g.collect(j, 'deadline', 5.0, tmp_path / 'w', out, open(os.devnull, 'w'))
    assert row['partial'] and not row['finished'] and row['epochs_done'] == 1 and (out / 'partial' / 'softmax-if100-seed0.pt').read_bytes() == b'ck'
    j2 = g.plan('softmax-if100', [0], tmp_path / 'w2', 'cpu', '.fmnist', epochs=2)[0]
    (tmp_path / 'w2').mkdir()
    j2.config['epochs'] = 'not-a-number'         # the child fails at once: only the hand-over of the checkpoint is checked here
    _, p, lf, _ = g.start([j2], tmp_path / 'w2', _ns(tmp_path, resume_from=str(out)), open(os.devnull, 'w'), None)
    p.wait(120); lf.close()
    assert j2.config['resume'] is True and (Path(j2.out_dir) / 'checkpoint.pt').read_bytes() == b'ck'


def test_gpu_paper_runs_plans_processes_or_groups_of_streams():
    "--mode processes: one run per process, --parallel at once; --mode streams: groups of --parallel runs, one process each."
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    jobs = g.plan('softmax-if100,seesaw-if100,ours-if100', [0, 1], '/tmp/x', 'cuda', '.fmnist')
    assert [len(u) for u in g.units(jobs, 'processes', 4)] == [1] * 6 and g._at_once('processes', 4) == 4
    groups = g.units(jobs, 'streams', 4)
    assert [len(u) for u in groups] == [4, 2] and [j for u in groups for j in u] == jobs and g._at_once('streams', 4) == 1
    assert g._unit_name(groups[1], 'streams') == 'group-seesaw-if100-seed1'     # seed-major: the group of 4 takes softmax seed 1
    args = [sys.executable, str(GPR), '--dry-run', '--rows', 'softmax-if100,seesaw-if100,ours-if100', '--seeds', '0', '--redo',
            '--parallel', '2', '--step-speed-s', '0']
    for mode, want in (([], ['mode: processes (each run its own process)', 'at most 2 at once (processes)']),     # the default
                       (['--mode', 'streams'], ['mode: streams (groups of 2 runs, each group one process',
                                                'process=group-softmax-if100-seed0', 'process=group-ours-if100-seed0'])):
        r = subprocess.run(args + mode, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and all(w in r.stdout for w in want) and ('process=' in r.stdout) == bool(mode), r.stdout + r.stderr

def test_gpu_paper_runs_streams_mode_trains_a_group_in_one_process(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    _small(g, monkeypatch)
    s = g.run(_ns(tmp_path, seeds='0', mode='streams'))      # 2 trial runs of one epoch, one train_many process, on the CPU
    assert s['mode'] == 'streams' and [(r['row'], r['rc'], r['finished'], r['epochs_done']) for r in s['rows']] == \
        [('softmax-if100', 0, True, 1), ('seesaw-if100', 0, True, 1)], s
    assert (tmp_path / 'out' / 'fmnist_lt-seesaw-if100-seed0.metrics.json').is_file()
    assert 'in group-softmax-if100-seed0 (one process, 2 runs)' in (tmp_path / 'out' / 'gpu_paper_runs.log').read_text()

def test_many_speed_times_processes_against_streams(tmp_path):
    "The CPU path of the GPU comparison, tiny: both modes train the same 2 runs; with eager steps their numbers are equal."
    out = tmp_path / 'ms.json'
    script = str(ROOT / 'benchmarks' / 'many_speed.py')
    small = ['--device', 'cpu', '--runs', '2', '--losses', 'softmax,seesaw', '--epochs', '1', '--model', 'small_resnet', '--batch', '64',
             '--limit-train', '200', '--limit-test', '100', '--step', 'eager', '--threads', '1']
    r = subprocess.run([sys.executable, script, *small, '--dry-run'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'run 1: seesaw seed 1' in r.stdout and 'processes: 2 processes' in r.stdout, r.stderr[-2000:]
    r = subprocess.run([sys.executable, script, *small, '--out', str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [m['rcs'] for m in res['modes'].values()] == [[0, 0], [0]] and res['warm_up'] == {'skipped': 'step=eager'}
    assert [(x['loss'], x['same'], x['max_abs_diff']) for x in res['per_run']] == [('softmax', True, 0), ('seesaw', True, 0)]
    assert res['streams_vs_processes']['throughput'] > 0 and 'throughput ratio' in out.with_suffix('.md').read_text()

def test_gpu_paper_runs_step_mode_goes_into_each_config_not_into_its_id():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    rows = 'softmax-if100,ours-if100'
    fast, eager = g.plan(rows, [0], '/tmp/x', 'cuda', '.fmnist'), g.plan(rows, [0], '/tmp/x', 'cuda', '.fmnist', step='eager')
    assert [j.config['step'] for j in fast] == ['compiled'] * 2 and [j.config['step'] for j in eager] == ['eager'] * 2
    assert [j.config_hash for j in fast] == [j.config_hash for j in eager]              # the same runs, installable either way
    r = subprocess.run([sys.executable, str(GPR), '--dry-run', '--rows', rows, '--seeds', '0', '--redo', '--step', 'eager',
                        '--step-speed-s', '0'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count('step=eager') == 2 and 'step speed: skipped' in r.stdout, r.stdout + r.stderr
    assert g.step_speed('/nonexistent', 0) == 'skipped'

def test_step_speed_times_eager_and_compiled_steps(tmp_path):
    out = tmp_path / 'ss.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'step_speed.py'), '--device', 'cpu', '--model', 'small_resnet',
                        '--channels', '1', '--size', '28', '--batch', '16', '--losses', 'softmax,seesaw', '--mode', 'aot_eager',
                        '--steps', '2', '--rounds', '1', '--out', str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [row['loss'] for row in res['rows']] == ['softmax', 'seesaw'] and res['compiled'] == 'aot_eager (aot_eager, fullgraph)'
    assert all(row['eager_ms'] > 0 and row['compiled_ms'] > 0 and row['check_max_abs_dw'] < 1e-5 for row in res['rows'])
    assert set(res['ratios']) == {'seesaw/softmax eager', 'seesaw/softmax compiled'} and 'speed-up' in out.with_suffix('.md').read_text()

def test_parity_harness_reports_each_row_both_ways(tmp_path):
    rows = ('softmax-if100', 'seesaw-if100')
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'parity.py'), '--profile', 'smoke', '--rows', ','.join(rows),
                        '--seeds', '0', '--epochs', '1', '--limit-train', '200', '--fast', 'aot_eager', '--out', str(tmp_path)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / 'parity.json').read_text())
    assert [s['row'] for s in doc['summary']] == list(rows) and doc['fast'] == 'aot_eager'
    assert {(x['row'], x['mode']) for x in doc['runs']} == {(row, m) for row in rows for m in ('eager', 'fast')}
    for row in rows:                # both modes of a seed are the same run (one config hash)
        assert len({x['config_hash'] for x in doc['runs'] if x['row'] == row}) == 1
    assert {x['step'] for x in doc['runs']} == {'eager', 'aot_eager (aot_eager, fullgraph)'}
    s = doc['summary'][0]
    assert s['seeds'] == 1 and s['eager_std'] is None and s['agree'] is None and 0 <= s['eager_mean'] <= 100 and s['max_abs_diff'] >= 0
    md = (tmp_path / 'parity.md').read_text()
    assert md.count('\n| ') == 3 and 'n/a (1 seed)' in md and md in r.stdout

def test_gpu_paper_runs_uses_the_compiled_step_only_once_it_beat_eager_on_that_gpu(tmp_path):
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    import gpu_paper_runs as g
    f = tmp_path / 'step_speed_gpu.json'
    assert g.choose_step('eager', f, 'skipped')[0] == 'eager'
    mode, why = g.choose_step('compiled', f, 'timed out after 150 s')          # no measurement: never compiled blind
    assert mode == 'eager' and 'timed out' in why
    f.write_text(json.dumps(dict(rows=[dict(loss='softmax', speedup=3.1), dict(loss='ours', speedup=0.9)])))
    mode, why = g.choose_step('compiled', f, dict(rc=0))
    assert mode == 'eager' and 'ours' in why
    f.write_text(json.dumps(dict(rows=[dict(loss='softmax', speedup=3.1), dict(loss='ours', speedup=2.0)])))
    assert g.choose_step('compiled', f, dict(rc=0)) == ('compiled', 'compiled: softmax 3.1x faster, ours 2.0x faster')
