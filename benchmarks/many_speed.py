"""N training runs on one device: as N processes (each `train`) vs as N runs in one process (`train_many`, a CUDA stream each).

    python benchmarks/many_speed.py [--runs 4] [--losses softmax,seesaw,ours] [--epochs 4] [--step compiled|eager|aot_eager]
                                    [--model resnet32] [--batch 128] [--limit-train 0] [--limit-test 0] [--data-root DIR]
                                    [--device cuda|cpu] [--threads 4] [--timeout-s 240] [--out FILE] [--dry-run]

The runs: fmnist_lt at IF 100, `--model`, batch `--batch`, lr 0.1 after one warm-up epoch, no decay, `--epochs`
epochs, run k with loss k of `--losses` (cycled) and seed k. Separate processes time-slice one GPU (unless MPS runs);
in one process the runs' steps (one CUDA-graph replay each with step='compiled') are queued on their own streams
and may overlap. With step='compiled', a warm-up first trains one short run per loss, so that both modes load the
compiled code from inductor's on-disk cache instead of compiling it (its time is reported apart).

Then, each mode from a fresh process, started at once (processes first):
- processes: N processes, each `ltpaper.train.train` of one run (`--threads` CPU threads each);
- streams: one process, `ltpaper.train.many.train_many` of the N runs.
Reported per mode: the wall time (start-up, data, compiled-code loading and training), and the steady throughput:
per run, its training images over the median epoch time of epochs 2.. (all epochs when there is one), summed over
the runs (in the processes mode this assumes the runs overlap, as they start together). The ratio streams/processes
of both, and per run whether its metrics are the same in both modes (every accuracy, loss and per-class number;
timings aside) with the largest difference: on the CPU with eager steps they must be equal; on CUDA the modes may
pick different kernels (cuDNN autotuning, inductor's), so rounding may differ. Writes JSON to --out (default
benchmarks/results/many_speed_<tag>.json) and a Markdown table next to it; prints the table.
"""
import argparse, json, os, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))
from gpu_paper_runs import CHILD as CHILD_ONE, CHILD_MANY   # the one-run and many-run child processes


def configs(a, root: Path, n: int | None = None, epochs: int | None = None, limit_train: int | None = None) -> list[dict]:
    "The TrainConfig fields of the runs, each with its own folder under `root`."
    losses = a.losses.split(',')
    n = a.runs if n is None else n
    return [dict(dataset='fmnist_lt', imbalance_factor=100, model=a.model, loss=losses[k % len(losses)], epochs=epochs or a.epochs,
                 batch_size=a.batch, lr=0.1, warmup_epochs=1, milestones=[], lr_decay=[], seed=k, step=a.step, device=a.device,
                 data_root=a.data_root, limit_train=a.limit_train if limit_train is None else limit_train, limit_test=a.limit_test,
                 threads=a.threads, progress=False, out_dir=str(root / f'run{k}-{losses[k % len(losses)]}')) for k in range(n)]


def child_env(a) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(a.threads), TORCHINDUCTOR_COMPILE_THREADS=str(a.threads),
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))


def launch(code: str, arg, log: Path, a) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', code, str(arg)], stdout=open(log, 'w'), stderr=subprocess.STDOUT, env=child_env(a))


def wait_all(procs: list, timeout_s: float) -> list:
    "Exit codes of `procs` ('timeout' for one still going after `timeout_s`, then stopped)."
    t_end, out = time.time() + timeout_s, []
    for p in procs:
        try:
            out.append(p.wait(max(1.0, t_end - time.time())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            out.append('timeout')
    return out


def run_mode(mode: str, cfgs: list, work: Path, a) -> dict:
    "Train `cfgs` as N processes or as one `train_many` process; its wall time, exit codes and each run's metrics (or None)."
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if mode == 'processes':
        procs = []
        for k, c in enumerate(cfgs):
            f = work / f'run{k}.json'
            f.write_text(json.dumps(c))
            procs.append(launch(CHILD_ONE, f, work / f'run{k}.log', a))
    else:
        f = work / 'runs.json'
        f.write_text(json.dumps(cfgs))
        procs = [launch(CHILD_MANY, f, work / 'many.log', a)]
    rcs = wait_all(procs, a.timeout_s)
    wall = time.perf_counter() - t0
    metrics = [json.loads(p.read_text()) if (p := Path(c['out_dir']) / 'metrics.json').is_file() else None for c in cfgs]
    tails = {log.name: log.read_text()[-1500:] for log in sorted(work.glob('*.log')) if any(rc != 0 for rc in rcs)}
    return dict(mode=mode, wall_s=round(wall, 2), rcs=rcs, metrics=metrics, log_tails=tails)


def steady_images_per_s(ms: list) -> float | None:
    "Summed over the runs: training images of an epoch over the median time of epochs 2.. (all epochs when there is one)."
    if any(m is None for m in ms): return None
    tot = 0.0
    for m in ms:
        times = [h['epoch_time_s'] for h in m['history']]
        tot += m['num_train'] / statistics.median(times[1:] or times)
    return round(tot, 1)


def numbers(m: dict) -> dict:
    "What must agree between the modes: the metrics without timings, provenance and run folders."
    m = json.loads(json.dumps(m))
    for h in m['history']: h.pop('epoch_time_s')
    for k in ('provenance', 'wall_time_s', 'images_per_s'): m.pop(k)
    m['config'].pop('out_dir')
    return m


def max_diff(a, b) -> float:
    "The largest absolute difference between the numbers of two equally shaped JSON values (inf when the shapes differ)."
    if isinstance(a, dict) and isinstance(b, dict):
        return max([max_diff(a[k], b[k]) for k in a] or [0.0]) if a.keys() == b.keys() else float('inf')
    if isinstance(a, list) and isinstance(b, list):
        return max([max_diff(x, y) for x, y in zip(a, b)] or [0.0]) if len(a) == len(b) else float('inf')
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b)
    return 0.0 if a == b else float('inf')


def compare(p: dict, s: dict) -> list:
    "Per run: is it the same in both modes, and the largest difference of its numbers."
    out = []
    for k, (mp, ms) in enumerate(zip(p['metrics'], s['metrics'])):
        if mp is None or ms is None:
            out.append(dict(run=k, same=None, max_abs_diff=None))
            continue
        a, b = numbers(mp), numbers(ms)
        out.append(dict(run=k, loss=mp['config']['loss'], same=a == b, max_abs_diff=max_diff(a, b)))
    return out


def warm_up(a, root: Path) -> dict:
    "With step='compiled': one short run per loss (two steps an epoch) in one process, so both modes find the compiled code cached."
    if a.step != 'compiled': return dict(skipped=f'step={a.step}')
    n = len(a.losses.split(','))
    cfgs = configs(a, root / 'warmup', n=n, epochs=1, limit_train=2 * a.batch)
    return run_mode('streams', cfgs, root / 'warmup', a) | dict(metrics=None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--runs', type=int, default=4, help='runs on the device at once (N)')
    ap.add_argument('--losses', default='softmax,seesaw,ours', help='comma-separated; run k trains loss k (cycled)')
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--step', default='compiled', choices=['compiled', 'eager', 'aot_eager'], help='TrainConfig.step of every run')
    ap.add_argument('--model', default='resnet32')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--limit-train', type=int, default=0, help='>0: cap the training images (a quicker check)')
    ap.add_argument('--limit-test', type=int, default=0, help='>0: cap the test images')
    ap.add_argument('--data-root', default=None, help="holds FashionMNIST/raw/*.gz (default: the settings' data root)")
    ap.add_argument('--device', default=None, help='cuda or cpu (default: cuda when there is one)')
    ap.add_argument('--threads', type=int, default=4, help='CPU threads of each process')
    ap.add_argument('--timeout-s', type=float, default=240, help='per mode: processes still going after this are stopped')
    ap.add_argument('--out', default=None, help='JSON output path (a Markdown table is written next to it)')
    ap.add_argument('--dry-run', action='store_true', help='print the runs and what would be timed; run nothing')
    a = ap.parse_args(argv)
    if a.data_root: a.data_root = str(Path(a.data_root).resolve())
    if a.dry_run: return dry_run(a)
    import torch
    a.device = a.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    tag = torch.cuda.get_device_name().replace(' ', '_') if a.device.startswith('cuda') else f'cpu{os.cpu_count()}'
    out = Path(a.out) if a.out else ROOT / 'benchmarks' / 'results' / f'many_speed_{tag}.json'
    root = Path(tempfile.mkdtemp(prefix='many_speed_'))
    warm = warm_up(a, root)
    modes = {m: run_mode(m, configs(a, root / m), root / m / 'work', a) for m in ('processes', 'streams')}
    return write(a, tag, warm, modes, out, torch.__version__)


def dry_run(a) -> dict:
    root = Path(tempfile.gettempdir()) / 'many_speed'
    cfgs = configs(a, root)
    print(f"warm-up: {'one short run per loss, in one process' if a.step == 'compiled' else 'none (step=' + a.step + ')'}")
    for k, c in enumerate(cfgs):
        print(f"run {k}: {c['loss']} seed {c['seed']}, {c['model']}, {c['epochs']} epochs, batch {c['batch_size']}, step={c['step']}")
    print(f"processes: {len(cfgs)} processes of `train`, {a.threads} threads each; streams: one process of `train_many` "
          f"({len(cfgs)} runs, a CUDA stream each); at most {a.timeout_s:.0f} s per mode")
    return dict(runs=cfgs)


def write(a, tag, warm, modes, out, torch_version) -> dict:
    "The JSON and Markdown of the comparison; prints the table."
    p, s = modes['processes'], modes['streams']
    rate = {m: steady_images_per_s(r['metrics']) for m, r in modes.items()}
    ratios = dict(throughput=round(rate['streams'] / rate['processes'], 3) if rate['processes'] and rate['streams'] else None,
                  wall_speedup=round(p['wall_s'] / s['wall_s'], 3))      # > 1: streams faster
    same = compare(p, s)
    doc = dict(benchmark='many_speed', tag=tag, hostname=socket.gethostname(), device=a.device, torch=torch_version, runs=a.runs,
               losses=a.losses, epochs=a.epochs, step=a.step, model=a.model, batch=a.batch, limit_train=a.limit_train, threads=a.threads,
               warm_up=warm, modes={m: {k: v for k, v in r.items() if k != 'metrics'} | dict(steady_images_per_s=rate[m])
                                    for m, r in modes.items()},
               streams_vs_processes=ratios, per_run=same)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    md = [f"## {a.runs} runs on one device: processes vs streams in one process ({tag}, {a.model}, step={a.step}, {a.epochs} epochs)", '',
          '| mode | wall s | steady images/s (summed) | exit codes |', '|---|---|---|---|']
    md += [f"| {m} | {r['wall_s']:.1f} | {rate[m] if rate[m] is not None else 'n/a'} | {r['rcs']} |" for m, r in modes.items()]
    per_run = ', '.join(f"{r['run']} {r.get('loss', '?')} {r['same']} (max |d| {r['max_abs_diff']})" for r in same)
    md += ['', f"streams vs processes (> 1: streams faster): throughput ratio {ratios['throughput']}, "
           f"wall-time speed-up {ratios['wall_speedup']}", '', f'same numbers per run: {per_run}', '']
    out.with_suffix('.md').write_text('\n'.join(md))
    print('\n'.join(md), flush=True)
    return doc


if __name__ == '__main__':
    main()
