"""The `paper` profile of fmnist_lt (ResNet-32, 200 epochs) on one GPU, for a lent machine without papermill.

Plans the jobs exactly as `ltpaper reproduce fmnist_lt --profile paper` does (same TrainConfig, same config hash),
leaves out the runs already committed under results/paper (unless --redo), and trains the rest seed by seed
(every row of seed 0, then of seed 1, ...: a cut-off leaves whole seeds, which pair) on the one GPU, at most
--parallel at once, in one of two modes (--mode):
- processes (the default): each run its own process (`ltpaper.train.train`), --parallel processes at once; the GPU
  time-slices between them (unless MPS runs);
- streams: groups of --parallel runs, each group ONE process (`ltpaper.train.many.train_many`) that steps its runs in
  turn, each on its own CUDA stream, one group at a time. Each run's numbers are those of its solo run (tested on
  the CPU); whether it is faster is what `benchmarks/many_speed.py` measures.
It writes, flat into --out: each
finished run's metrics.json (`fmnist_lt-<row>-seed<s>.metrics.json`, GPU name in its provenance), one log and a
summary JSON (wall times, epochs done). A run still going at --deadline-s is stopped and reported as unfinished:
no result is made up for it, but its last epoch checkpoint is kept as `partial/<row>-seed<s>.pt`; the next window
continues it exactly (`--resume-from DIR`, the folder of the earlier call's fetched outputs). If time is left after
the runs, the CUDA checks of the notebooks' gpu cells (benchmarks/gpu_cells.py) and a short loss-speed benchmark
run too.

Each run trains with `--step` (`TrainConfig.step`, a run-control field: the config hash, and so the installed
run's id, is the same in every mode; the mode is recorded in the run's config and provenance). The default is
`compiled`: the whole training step as one compiled graph replayed as a CUDA graph (nbs/train/05_step.ipynb). Before the
runs, `benchmarks/step_speed.py` times eager vs compiled steps of ResNet-32 for softmax and ours (at most
--step-speed-s seconds of the window, counted in the deadline; 0 skips it).

Default rows: `budget`, the IF-100 rows of the budget comparison (the `mid` profile's rows in configs/fmnist_lt.yaml:
Softmax, Seesaw, R, A+U, R+A+U, R+A+AU as the paper reads it, ours_tuned, R with S = sum F^beta), seeds 0,1,2.

Bring the results home with `python benchmarks/gpu_paper_runs.py --install DIR` (copies the metrics files to
results/paper/runs/fmnist_lt/<row>/seed<s>/, where `ltpaper status fmnist_lt --profile paper` finds them).

Usage:
  python benchmarks/gpu_paper_runs.py --out DIR [--rows budget|GLOBS] [--seeds 0,1,2] [--parallel 12] [--mode processes|streams] [--redo]
         [--deadline-s 420] [--resume-from DIR] [--data-root .fmnist] [--step compiled|eager] [--step-speed-s 150]
         [--epochs N  (a trial on fewer epochs: NOT the paper profile)] [--dry-run  (print the plan, run nothing)]
  python benchmarks/gpu_paper_runs.py --install DIR
"""
import argparse, dataclasses, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ltpaper.pipeline.runs import parse_seeds
CHILD = ("import json, sys; from ltpaper.config import TrainConfig; from ltpaper.train import train; "
         "train(TrainConfig(**json.load(open(sys.argv[1]))))")
CHILD_MANY = ("import json, sys; from ltpaper.config import TrainConfig; from ltpaper.train.many import train_many; "
              "train_many([TrainConfig(**d) for d in json.load(open(sys.argv[1]))])")
MODES = ('processes', 'streams')

def budget_rows() -> str:
    "The IF-100 rows of the budget comparison: the `mid` profile's rows (one list, in the table's config)."
    from ltpaper.pipeline.tables import load_table
    return ','.join(load_table('fmnist_lt')['profiles']['mid']['rows'])

def plan(rows, seeds, results_root, device, data_root, epochs=None, step='compiled'):
    "The paper-profile jobs of `rows` x `seeds`, seed-major, trained with `step`; `epochs` makes a trial (another config hash)."
    from ltpaper.config import config_hash
    from ltpaper.pipeline.runs import plan_jobs
    rows = budget_rows() if rows == 'budget' else rows
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    jobs = plan_jobs('fmnist_lt', 'paper', rows=rows, seeds=seeds, results_root=results_root, device=device)
    jobs.sort(key=lambda j: seeds.index(j.seed))      # stable: rows keep the table's order within a seed
    for j in jobs:
        j.config.update(data_root=str(data_root), progress=True, resume=False, num_workers=0, step=step)   # progress: a line per epoch
        if epochs:   # a trial: fewer epochs, milestones scaled (a different config hash: never installed as paper runs)
            E = j.config['epochs']; j.config['epochs'] = epochs
            j.config['milestones'] = sorted({max(1, min(epochs - 1, round(m * epochs / E))) for m in j.config['milestones']})[:len(j.config['lr_decay'])]
            j.config['lr_decay'] = j.config['lr_decay'][:len(j.config['milestones'])]
            j.config['warmup_epochs'] = min(j.config['warmup_epochs'], max(epochs - 1, 0))
            j.config_hash = config_hash(j.config)
    return jobs

def to_run(jobs, redo=False):
    "The jobs not yet committed under results/paper (all of them with `redo`), and the committed ones left out."
    from ltpaper.pipeline.runs import job_state, output_roots, run_dir
    if redo: return jobs, []
    root = output_roots('paper')['results']
    have = lambda j: job_state(dataclasses.replace(j, out_dir=str(run_dir(root, j.table, j.row, j.seed))))[0] == 'done'
    return [j for j in jobs if not have(j)], [j for j in jobs if have(j)]

def _name(j): return f'{j.row}-seed{j.seed}'

def units(jobs, mode, parallel) -> list:
    "What each process trains: one run (processes), or a group of up to `parallel` runs stepped together (streams)."
    if mode not in MODES: raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == 'processes': return [[j] for j in jobs]
    return [jobs[k:k + parallel] for k in range(0, len(jobs), parallel)]

def _unit_name(unit, mode): return _name(unit[0]) if mode == 'processes' else f'group-{_name(unit[0])}'

def _at_once(mode, parallel): return parallel if mode == 'processes' else 1    # runs on the GPU at once: `parallel` either way

def run(ns):
    import torch
    out = Path(ns.out); out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    device = 'cuda' if gpu else 'cpu'
    if ns.require_gpu and not gpu: sys.exit("gpu_paper_runs.py: no CUDA device visible; run it on a GPU machine (or pass --no-require-gpu for a CPU trial)")
    work = Path(tempfile.mkdtemp(prefix='gpu_paper_'))
    jobs, skipped = to_run(plan(ns.rows, parse_seeds(ns.seeds), work, device, Path(ns.data_root).resolve(), ns.epochs, ns.step),
                           ns.redo or bool(ns.epochs))
    log = open(out/'gpu_paper_runs.log', 'w')
    summary = dict(gpu=gpu, torch=torch.__version__, commit=ns.commit, rows=[], deadline_s=ns.deadline_s, trial_epochs=ns.epochs,
                   parallel=ns.parallel, mode=ns.mode, step=ns.step, already_committed=[_name(j) for j in skipped])
    summary['step_speed'] = step_speed(out, ns.step_speed_s if gpu else 0)    # first: eager vs compiled steps, same process
    if gpu:     # the compiled step is used only once it ran on this GPU and beat eager for every loss timed
        mode, summary['step_choice'] = choose_step(ns.step, out/'step_speed_gpu.json', summary['step_speed'])
        for j in jobs: j.config['step'] = mode
        print(f"step mode of the runs: {summary['step_choice']}", file=log, flush=True)
    queue, procs, done = units(jobs, ns.mode, ns.parallel), [], {}
    while queue or len(done) < len(procs):
        while queue and len(procs) - len(done) < _at_once(ns.mode, ns.parallel) and time.time() - t0 < ns.deadline_s:
            procs.append(start(queue.pop(0), work, ns, log, gpu))
        if queue and time.time() - t0 >= ns.deadline_s: summary['not_started'] = [_name(j) for u in queue for j in u]; queue = []
        for unit, p, lf, ts in procs:
            name = _unit_name(unit, ns.mode)
            if name in done: continue
            rc = p.poll()
            if rc is None and time.time() - t0 > ns.deadline_s:
                p.terminate()
                try: p.wait(20)
                except subprocess.TimeoutExpired: p.kill(); p.wait()
                rc = 'deadline'
            if rc is not None: done[name] = (rc, time.time() - ts)
        time.sleep(2)
    for unit, p, lf, ts in procs:
        lf.close(); rc, wall = done[_unit_name(unit, ns.mode)]
        for j in unit: summary['rows'].append(collect(j, rc, wall, work, out, log, _unit_name(unit, ns.mode)))
    summary['runs_wall_s'] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=1), file=log, flush=True)
    # what time is left: the notebooks' CUDA checks, then a short loss-speed benchmark (after the runs: no contention)
    for name, cmd, need in [('gpu_cells', [sys.executable, str(ROOT/'benchmarks'/'gpu_cells.py')], 40),
                            ('loss_speed', [sys.executable, str(ROOT/'benchmarks'/'loss_speed.py'), '--device', 'cuda', '--classes', '1000,8142',
                                            '--repeats', '20', '--out', str(out/'loss_speed_gpu.json')], 60)]:
        left = ns.deadline_s + ns.extra_s - (time.time() - t0)
        if not gpu or left < need: summary[name] = f'skipped ({left:.0f} s left)'; continue
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=left, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            summary[name] = dict(rc=r.returncode, tail=(r.stdout + r.stderr)[-3000:])
        except subprocess.TimeoutExpired: summary[name] = 'timed out'
    summary['total_wall_s'] = round(time.time() - t0, 1)
    (out/'gpu_paper_runs.json').write_text(json.dumps(summary, indent=1))
    log.close()
    print(json.dumps(summary, indent=1))
    return summary

def choose_step(asked, speed_json, speed) -> tuple:
    "(mode, why): 'compiled' only when step_speed ran it here and it was faster than eager for every loss; else 'eager'."
    if asked != 'compiled': return asked, f'{asked}, as asked'
    rows = json.loads(Path(speed_json).read_text()).get('rows', []) if Path(speed_json).is_file() else []
    if not rows:
        return 'eager', f"eager: the compiled step was not checked on this GPU ({speed if isinstance(speed, str) else speed.get('rc')})"
    slow = [r['loss'] for r in rows if not r.get('speedup', 0) > 1.0]
    if slow: return 'eager', f"eager: the compiled step was not faster for {', '.join(slow)}"
    return 'compiled', 'compiled: ' + ', '.join(f"{r['loss']} {r['speedup']}x faster" for r in rows)

def step_speed(out, seconds) -> dict|str:
    "benchmarks/step_speed.py on the GPU (eager vs compiled ResNet-32 steps, softmax and ours) in at most `seconds`."
    if seconds <= 0: return 'skipped'
    cmd = [sys.executable, str(ROOT/'benchmarks'/'step_speed.py'), '--device', 'cuda', '--channels', '1', '--size', '28',   # the runs'
           '--out', str(out/'step_speed_gpu.json')]                                                                         # shapes
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        return dict(rc=r.returncode, tail=(r.stdout + r.stderr)[-3000:])
    except subprocess.TimeoutExpired: return f'timed out after {seconds:.0f} s'

def _hand_over(j, ns) -> Path|None:
    "A fetched partial checkpoint of `j` (--resume-from) put into its run folder, the run set to resume; None without one."
    part = Path(ns.resume_from or '/nonexistent')/'partial'/f'{_name(j)}.pt'
    if not part.is_file(): return None
    Path(j.out_dir).mkdir(parents=True, exist_ok=True); shutil.copy(part, Path(j.out_dir)/'checkpoint.pt')
    j.config['resume'] = True
    return part

def start(unit, work, ns, log, gpu):
    "Start one process: one run (processes) or a group stepped by train_many (streams), continuing fetched partial checkpoints."
    parts = [_hand_over(j, ns) for j in unit]
    name = _unit_name(unit, ns.mode)
    cfgf = work/f'{name}.json'
    cfgf.write_text(json.dumps(unit[0].config if ns.mode == 'processes' else [j.config for j in unit]))
    env = dict(os.environ, OMP_NUM_THREADS=str(ns.threads), PYTHONUNBUFFERED='1',
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
               TORCHINDUCTOR_COMPILE_THREADS=str(ns.threads))   # runs that compile at once share the CPU cores
    lf = open(work/f'{name}.log', 'w')
    p = subprocess.Popen([sys.executable, '-c', CHILD if ns.mode == 'processes' else CHILD_MANY, str(cfgf)], stdout=lf,
                         stderr=subprocess.STDOUT, env=env)
    for j, part in zip(unit, parts):
        print(f"started {_name(j)} [{j.config_hash}] epochs={j.config['epochs']} on {gpu or 'cpu'}"
              + (f" in {name} (one process, {len(unit)} runs)" if ns.mode == 'streams' else '')
              + (f" from {part} (resumed)" if part else ''), file=log, flush=True)
    return unit, p, lf, time.time()

def _epochs_done(m: Path, ck: Path, text: str, alone: bool) -> int|None:
    "Epochs trained: the log's epoch lines of a run alone in its log; in a group's log, the run's own record (all its epochs)."
    if alone: return sum(1 for line in text.splitlines() if line.startswith('epoch '))
    if m.is_file(): return len(json.loads(m.read_text())['history'])
    import torch
    try: return int(torch.load(ck, map_location='cpu', weights_only=True)['epoch'])
    except Exception: return None      # no checkpoint yet, or a damaged one

def collect(j, rc, wall, work, out, log, log_name=None) -> dict:
    "One run's line of the summary; its metrics.json (finished) or its last checkpoint (stopped) copied into `out`."
    m, ck = Path(j.out_dir)/'metrics.json', Path(j.out_dir)/'checkpoint.pt'
    text = (work/f'{log_name or _name(j)}.log').read_text()
    log.write(f"\n===== {_name(j)}: rc={rc} wall={wall:.0f}s\n" + '\n'.join(text.splitlines()[-25:]) + '\n')
    ep = _epochs_done(m, ck, text, alone=log_name in (None, _name(j)))
    row = dict(row=j.row, seed=j.seed, config_hash=j.config_hash, rc=rc, wall_s=round(wall, 1), finished=m.is_file(), epochs_done=ep)
    if m.is_file():
        rec = json.loads(m.read_text())
        row.update(last_top1=rec['last']['top1'], val_last_top1=rec['val']['last_top1'], images_per_s=rec['images_per_s'],
                   epochs=rec['config']['epochs'], device=rec['provenance']['device'])
        shutil.copy(m, out/f'fmnist_lt-{_name(j)}.metrics.json')
    elif ck.is_file():          # stopped at the deadline: the last finished epoch, for the next window (not a result)
        (out/'partial').mkdir(exist_ok=True); shutil.copy(ck, out/'partial'/f'{_name(j)}.pt'); row['partial'] = True
    return row

def dry_run(ns):
    "The plan without running: the runs in their order, and the runs left out because they are committed."
    jobs, skipped = to_run(plan(ns.rows, parse_seeds(ns.seeds), tempfile.gettempdir(), 'cuda', ns.data_root, ns.epochs, ns.step),
                           ns.redo or bool(ns.epochs))
    print(f"step speed: {'benchmarks/step_speed.py first, at most %.0f s' % ns.step_speed_s if ns.step_speed_s > 0 else 'skipped'}")
    how = ('each run its own process' if ns.mode == 'processes' else
           f'groups of {ns.parallel} runs, each group one process stepping its runs in turn, a CUDA stream each')
    print(f"mode: {ns.mode} ({how})")
    for u in units(jobs, ns.mode, ns.parallel):
        for j in u:
            print(f"run  {_name(j)} [{j.config_hash}] epochs={j.config['epochs']} model={j.config['model']} step={j.config['step']}"
                  + (f" process={_unit_name(u, ns.mode)}" if ns.mode == 'streams' else ''))
    for j in skipped: print(f"have {_name(j)} [{j.config_hash}] (committed under results/paper)")
    print(f"{len(jobs)} to run, {len(skipped)} committed, at most {ns.parallel} at once ({ns.mode}), deadline {ns.deadline_s:.0f} s")

def install(src):
    "Copy fetched metrics files into results/paper/runs/fmnist_lt/<row>/seed<s>/metrics.json, checking their hashes."
    from ltpaper.config import config_hash
    from ltpaper.pipeline.runs import output_roots
    root = output_roots('paper')['results']      # results/paper/ (the results root's paper/ folder)
    n = 0
    for f in sorted(Path(src).glob('fmnist_lt-*-seed*.metrics.json')):
        rec = json.loads(f.read_text())
        row, seed = f.name[len('fmnist_lt-'):].rsplit('-seed', 1); seed = int(seed.split('.')[0])
        try: want = [j for j in plan(row, [seed], None, None, '.') if j.row == row][0]
        except (ValueError, IndexError): print(f"skip {f.name}: {row!r} is not a row of fmnist_lt"); continue
        if config_hash(rec['config']) != want.config_hash or rec['status'] != 'complete':
            print(f"skip {f.name}: config {config_hash(rec['config'])} is not the paper profile's {want.config_hash} (a trial?)"); continue
        dst = Path(want.out_dir); dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst/'metrics.json'); n += 1
        print(f"installed {dst/'metrics.json'} ({rec['provenance']['device']}, last top-1 {rec['last']['top1']:.2f})")
    print(f"{n} run(s) installed under {root}")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', help='folder for the metrics files, log and summary')
    ap.add_argument('--rows', default='budget', help="'budget' (the IF-100 rows of the budget comparison) or comma-separated globs")
    ap.add_argument('--seeds', '--seed', default='0,1,2', help='comma-separated seeds')
    ap.add_argument('--parallel', type=int, default=12, help='runs at once on the one GPU (processes: one each; streams: one group)')
    ap.add_argument('--mode', default='processes', choices=MODES,
                    help='processes: each run its own process; streams: groups of --parallel runs, each one process (train_many)')
    ap.add_argument('--redo', action='store_true', help='also run the rows x seeds already committed under results/paper')
    ap.add_argument('--resume-from', metavar='DIR', help="an earlier call's fetched outputs: continue its partial/ checkpoints")
    ap.add_argument('--dry-run', action='store_true', help='print the plan (what runs, what is committed already) and run nothing')
    ap.add_argument('--deadline-s', type=float, default=420, help='stop runs still going after this many seconds')
    ap.add_argument('--extra-s', type=float, default=60, help='seconds after the deadline the optional checks may use')
    ap.add_argument('--data-root', default='.fmnist', help='holds FashionMNIST/raw/*.gz (or Debian\'s package is installed)')
    ap.add_argument('--threads', type=int, default=4, help='CPU threads per run')
    ap.add_argument('--epochs', type=int, default=None, help='a trial with fewer epochs (not the paper profile)')
    ap.add_argument('--step', default='compiled', choices=['compiled', 'eager'],
                    help="TrainConfig.step of every run: compiled (one graph, CUDA graphs; used only if step_speed found it faster "
                         "than eager on this GPU, else eager) or eager (the loop); not part of the run's id")
    ap.add_argument('--step-speed-s', type=float, default=150, help='seconds for benchmarks/step_speed.py before the runs (0: skip)')
    ap.add_argument('--commit', default=None, help='the git commit of this tree, recorded in the summary (the device copy has no .git)')
    ap.add_argument('--no-require-gpu', dest='require_gpu', action='store_false')
    ap.add_argument('--install', metavar='DIR', help='copy fetched metrics files from DIR into results/paper/runs')
    ns = ap.parse_args()
    if ns.install: install(ns.install)
    elif ns.dry_run: dry_run(ns)
    elif ns.out: run(ns)
    else: ap.error('give --out DIR (run) or --install DIR')
