"""`make bench`: run every benchmark, then write benchmarks/results/<machine>.json and <machine>.md.

Each benchmark prints ratios against a baseline measured in the same process (these machines are noisy):
- loss_speed.py: every loss vs F.cross_entropy (B=512, C in 10/100/1000/8142), forward+backward, peak memory;
- train_speed.py: ResNet-32 pure model step vs full epoch (fast path, PIL path), ours vs softmax, channels_last;
- the `cpu` profile of fmnist_lt: wall time summed from the committed metrics.json files (and per-row times).
"""
import argparse, json, os, platform, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

def machine_name():
    import torch
    if os.environ.get('LTPAPER_MACHINE'): return os.environ['LTPAPER_MACHINE']
    if torch.cuda.is_available(): return torch.cuda.get_device_name().replace(' ', '_')
    return f'cpu{os.cpu_count()}-{platform.machine()}'

def run(script, *args):
    cmd = [sys.executable, str(HERE / script), *args]
    print('$', ' '.join(cmd), flush=True)
    t = time.time(); r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode: raise SystemExit(f'{script} failed with exit code {r.returncode}')
    return time.time() - t

def profile_wall_time(table='fmnist_lt', profile='cpu'):
    "Sum of wall_time_s over the committed runs of a table (what the cpu profile costs on the machine that ran it)."
    runs = sorted((ROOT / 'results' / 'runs' / table).glob('*/seed*/metrics.json'))
    rows = []
    for p in runs:
        m = json.loads(p.read_text())
        if m.get('profile', m.get('config', {}).get('profile')) not in (None, profile): continue
        rows.append(dict(row=p.parent.parent.name, seed=p.parent.name, wall_time_s=m.get('wall_time_s'),
                         images_per_s=m.get('images_per_s'), device=m.get('provenance', {}).get('device')))
    tot = sum(r['wall_time_s'] or 0 for r in rows)
    return dict(table=table, profile=profile, runs=len(rows), train_wall_time_s=tot, rows=rows)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='short versions of each benchmark (a smoke check)')
    ap.add_argument('--threads', type=int, default=None, help='torch threads for the training benchmark (default: its own, 2)')
    ap.add_argument('--only', choices=['loss', 'train', 'none'], default=None,
                    help='rerun only this benchmark (none: just rebuild the summary from the committed outputs)')
    a = ap.parse_args(argv)
    m = machine_name()
    out = HERE / 'results'; out.mkdir(exist_ok=True)
    q = ['--quick'] if a.quick else []
    t_loss = run('loss_speed.py', *q, '--out', str(out / f'loss_speed_{m}.json')) if a.only in (None, 'loss') else None
    t_train = run('train_speed.py', *q, *(['--threads', str(a.threads)] if a.threads else []), '--out', str(out / f'train_speed_{m}.json')) \
        if a.only in (None, 'train') else None
    loss = json.loads((out / f'loss_speed_{m}.json').read_text())
    train = json.loads((out / f'train_speed_{m}.json').read_text())
    prof = profile_wall_time()
    res = dict(machine=m, date=time.strftime('%Y-%m-%d %H:%M'), quick=a.quick, loss_speed=loss, train_speed=train,
               fmnist_cpu_profile=prof, bench_seconds=dict(loss=t_loss, train=t_train))
    (out / f'{m}.json').write_text(json.dumps(res, indent=1))
    md = [f'# Benchmarks on {m} ({res["date"]}{", quick" if a.quick else ""})', '',
          (out / f'loss_speed_{m}.md').read_text() if (out / f'loss_speed_{m}.md').exists() else '',
          (out / f'train_speed_{m}.md').read_text() if (out / f'train_speed_{m}.md').exists() else json.dumps(train, indent=1),
          f"## fmnist_lt `cpu` profile\n\n{prof['runs']} committed runs, training wall time {prof['train_wall_time_s'] / 60:.1f} min "
          "(summed metrics.json wall_time_s; papermill/kernel start-up not included).\n"]
    (out / f'{m}.md').write_text('\n'.join(md))
    print(f'wrote {out / (m + ".json")} and {out / (m + ".md")}')

if __name__ == '__main__': main()
