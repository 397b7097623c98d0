"""What the AVX2 pins cost: one epoch of the `cpu` profile's training (Fashion-MNIST-LT IF 100, small_resnet, `ours`,
batch 128, one thread) pinned (ltpaper.numerics: ATen, oneDNN and MKL on their AVX2 paths) vs native (the processor's
own kernels, `LTPAPER_NUMERICS=native`), each in a fresh process, in interleaved pairs (pinned, native, pinned, ...).

    python benchmarks/pin_cost.py [--pairs 4] [--loss ours] [--out FILE]

Prints each pair's training-epoch seconds (the record's `epoch_time_s`, evaluation excluded) and the median ratio
native / pinned (below 1: the pins cost time). On a machine whose instruction set is AVX2 the two are the same
kernels. Writes JSON to --out (default benchmarks/results/pin_cost_<cpu tag>.json) and a Markdown table beside it."""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ltpaper.numerics import MODE_VAR, PINS, cpu_info, pinned_env


def one_epoch(mode: str, loss: str, out: Path) -> dict:
    "Train one epoch in a fresh process under `mode` ('pinned' | 'native'); the record's epoch time and capability."
    env = {k: v for k, v in os.environ.items() if k not in PINS}
    env.update({MODE_VAR: mode, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)})
    env = pinned_env(env)
    args = ['--dataset', 'fmnist_lt', '--imbalance-factor', '100', '--model', 'small_resnet', '--loss', loss, '--epochs', '1',
            '--batch-size', '128', '--lr', '0.05', '--warmup-epochs', '0', '--threads', '1', '--device', 'cpu',
            '--no-progress', '--out-dir', str(out)]
    r = subprocess.run([sys.executable, '-m', 'ltpaper.cli', 'train', *args, '--force'], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    if r.returncode: raise SystemExit(f"pin_cost: the {mode} run failed: {r.stderr.strip().splitlines()[-1:]}")
    rec = json.loads((out/'metrics.json').read_text())
    return dict(seconds=rec['history'][0]['epoch_time_s'], capability=rec['provenance']['numerics']['capability'],
                images=rec['num_train'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--pairs', type=int, default=4)
    ap.add_argument('--loss', default='ours')
    ap.add_argument('--out')
    a = ap.parse_args(argv)
    info = cpu_info()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k in range(a.pairs):
            p, n = (one_epoch(m, a.loss, Path(d)/f'{m}{k}') for m in ('pinned', 'native'))
            rows.append(dict(pinned=p, native=n, ratio=n['seconds'] / p['seconds']))
            print(f"pair {k + 1}: pinned {p['seconds']:.2f} s ({p['capability']}), native {n['seconds']:.2f} s "
                  f"({n['capability']}), native/pinned {rows[-1]['ratio']:.3f}", flush=True)
    med = statistics.median(r['ratio'] for r in rows)
    res = dict(when=datetime.now(timezone.utc).isoformat(timespec='seconds'), cpu=info['model'], avx512='avx512f' in info['flags'],
               loss=a.loss, pairs=rows, median_ratio_native_over_pinned=med,
               median_pinned_s=statistics.median(r['pinned']['seconds'] for r in rows),
               median_native_s=statistics.median(r['native']['seconds'] for r in rows))
    print(f"median native/pinned epoch time: {med:.3f} ({'the pins cost time' if med < 1 else 'no cost'}; "
          f"pinned {res['median_pinned_s']:.2f} s, native {res['median_native_s']:.2f} s per epoch of {rows[0]['pinned']['images']} images)")
    tag = f"cpu{os.cpu_count()}-{platform.machine()}{'-avx512' if res['avx512'] else ''}"
    out = Path(a.out) if a.out else ROOT/'benchmarks'/'results'/f'pin_cost_{tag}.json'
    out.write_text(json.dumps(res, indent=1) + '\n')
    md = ['| pair | pinned s | native s | native / pinned |', '|---|---|---|---|']
    md += [f"| {i + 1} | {r['pinned']['seconds']:.2f} | {r['native']['seconds']:.2f} | {r['ratio']:.3f} |" for i, r in enumerate(rows)]
    md += [f"| median | {res['median_pinned_s']:.2f} | {res['median_native_s']:.2f} | {med:.3f} |"]
    out.with_suffix('.md').write_text(f"# Cost of the AVX2 pins ({res['cpu']}, AVX-512: {res['avx512']}, {res['when']})\n\n"
                                      f"One training epoch of `{a.loss}` on Fashion-MNIST-LT IF 100, small_resnet, 1 thread, "
                                      f"each in a fresh process, pairs interleaved.\n\n" + '\n'.join(md) + '\n')
    return 0


if __name__ == '__main__': sys.exit(main())
