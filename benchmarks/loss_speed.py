"""Forward+backward time and peak memory of every loss against F.cross_entropy, in the same process.

    python benchmarks/loss_speed.py [--classes 10,100,1000,8142] [--batch 512] [--repeats 30] [--device cpu|cuda]
                                    [--losses ours,...] [--clock wall|cpu] [--out FILE]

Prints one row per (C, loss): median ms, ratio to cross-entropy (the median over interleaved pairs: one
cross-entropy step, one loss step, in alternating order, so that load on the machine hits both alike), and (CPU, C=8142)
the peak resident memory added by one forward+backward relative to cross-entropy's (Linux VmHWM reset through
/proc/self/clear_refs, each loss in a fresh process with glibc's mmap threshold fixed so freed memory is not reused). Targets (issue): ours (R+A+AU) <= 4x CE at
C=1000 and <= 2x at C=8142 on CPU; peak memory of ours <= 1.5x CE at C=8142; later, ours <= 3x CE at C=1000.
The ratios depend on the kernel set (cross-entropy gains more from AVX-512 than the statistics do): run it as the
project runs, under the pins (`python -m ltpaper.numerics -- python benchmarks/loss_speed.py`), and with
LTPAPER_NUMERICS=native for the processor's own kernels; the file records which (`capability`, `pins`).
"""
import argparse, json, os, platform, socket, statistics, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ltpaper.losses import build_loss, LOSSES
from ltpaper.numerics import PINS

def counts_for(C, n_max=1280, IF=100):
    return [max(1, int(n_max * (1 / IF) ** (i / max(C - 1, 1)))) for i in range(C)]

def _rss_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field): return int(line.split()[1])
    return 0

def peak_cpu_kb(fn):
    "Peak RSS added while fn runs (Linux); None where VmHWM cannot be reset."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
    except OSError: return None
    base = _rss_kb('VmRSS'); fn(); return max(_rss_kb('VmHWM') - base, 0)

_MEM_CHILD = r"""
import sys, json, torch, torch.nn.functional as F
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
from loss_speed import counts_for, peak_cpu_kb
from ltpaper.losses import build_loss
C, B, name, hp = {C}, {B}, {name!r}, {hp!r}
g = torch.Generator().manual_seed(0); counts = counts_for(C)
p = torch.tensor(counts, dtype=torch.float) / sum(counts)
logits = (torch.randn(B, C, generator=g) * 2).requires_grad_(); target = torch.multinomial(p, B, replacement=True, generator=g)
loss = (lambda z, y: F.cross_entropy(z, y)) if name == 'cross_entropy' else build_loss(name, counts, **hp)
def fb():
    logits.grad = None; loss(logits, target).backward()
fb(); fb()
print(json.dumps(peak_cpu_kb(fb)))
"""

def peak_cpu_kb_fresh(name, hp, C, B):
    "Peak RSS added by one forward+backward, in a fresh process whose large allocations are always mmapped (glibc's\n    dynamic mmap threshold would otherwise reuse freed heap memory and hide the peak)."
    import subprocess
    here = str(Path(__file__).resolve().parent)
    code = _MEM_CHILD.format(root=str(Path(here).parent), here=here, C=C, B=B, name=name, hp=hp)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=600)
    try: return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception: return None

CLOCKS = dict(wall=time.perf_counter, cpu=time.thread_time)   # cpu: this thread's CPU time, blind to time spent preempted

def time_fn(fn, repeats, device, clock='wall'):
    for _ in range(3): fn()
    ts, now = [], CLOCKS[clock]
    for _ in range(repeats):
        if device == 'cuda': torch.cuda.synchronize()
        t = now(); fn()
        if device == 'cuda': torch.cuda.synchronize()
        ts.append((now() - t) * 1e3)
    return statistics.median(ts)

def time_pairs(base, fn, repeats, device, clock='wall'):
    "Interleaved pairs (base step, fn step; the order alternates): median ms of each, the median and the quartiles of the per-pair ratios."
    for _ in range(3): base(); fn()
    tb, tf = [], []
    now = CLOCKS[clock]
    def once(f, ts):
        if device == 'cuda': torch.cuda.synchronize()
        t = now(); f()
        if device == 'cuda': torch.cuda.synchronize()
        ts.append((now() - t) * 1e3)
    for i in range(repeats):
        for f, ts in ((base, tb), (fn, tf)) if i % 2 == 0 else ((fn, tf), (base, tb)): once(f, ts)
    ratios = [b / a for a, b in zip(tb, tf)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return statistics.median(tb), statistics.median(tf), statistics.median(ratios), (q1, q3)

def bench(classes, batch, repeats, device, names, clock='wall'):
    rows = []
    for C in classes:
        g = torch.Generator().manual_seed(0)
        counts = counts_for(C)
        p = torch.tensor(counts, dtype=torch.float) / sum(counts)
        logits = (torch.randn(batch, C, generator=g) * 2).to(device).requires_grad_()
        target = torch.multinomial(p, batch, replacement=True, generator=g).to(device)
        def ce():
            logits.grad = None; F.cross_entropy(logits, target).backward()
        base_ms = time_fn(ce, repeats, device, clock)
        mem_on = device == 'cpu' and C >= 8142              # the memory target is at C=8142
        base_mem = peak_cpu_kb_fresh('cross_entropy', {}, C, batch) if mem_on else None
        rows.append(dict(C=C, loss='cross_entropy', ms=base_ms, ratio=1.0, peak_kb=base_mem, mem_ratio=1.0))
        for name, hp in names:
            loss = build_loss(name, counts, **hp).to(device)
            def fb():
                logits.grad = None; loss(logits, target).backward()
            base_ms, ms, ratio, (q1, q3) = time_pairs(ce, fb, repeats, device, clock)   # the baseline next to each loss (noisy machines)
            mem = peak_cpu_kb_fresh(name, hp, C, batch) if mem_on else None
            label = _label(name, hp)
            rows.append(dict(C=C, loss=label, ms=ms, ratio=ratio, ratio_q1=q1, ratio_q3=q3, ce_ms=base_ms, peak_kb=mem,
                             mem_ratio=(mem / base_mem) if (mem is not None and base_mem) else None))
            print(f"C={C:5d} {label:40s} {ms:8.3f} ms  x{ratio:6.2f} CE [{q1:.2f}-{q3:.2f}]" + (f"  peak +{mem/1024:.1f} MiB (x{rows[-1]['mem_ratio']:.2f} CE)" if mem is not None and base_mem else ''), flush=True)
    return rows

def _label(name, hp): return name + ('' if not hp else '(' + ','.join(f'{k}={v}' for k, v in hp.items()) + ')')

def _loadavg():
    try: return os.getloadavg()
    except OSError: return None

def _fmt(x): return "" if x is None else f"{x:.2f}"

def to_markdown(rows, meta):
    load = ''.join(f", load average {' / '.join(f'{x:.1f}' for x in meta[k])} at the {w}"
                   for k, w in (('load_avg_start', 'start'), ('load_avg_end', 'end')) if meta.get(k))
    kernels = f", ATen kernels {meta['capability']}" if meta.get('capability') else ''
    lines = [f"Loss forward+backward, B={meta['batch']}, device {meta['device']} ({meta['machine']}{kernels}, {meta['threads']} thread(s){load}), "
             f"median of {meta['repeats']} ({meta.get('clock', 'wall')} clock); ratio = median over interleaved pairs of "
             "time / F.cross_entropy in the same process (x CE), with the quartiles of the per-pair ratios.", '',
             '| C | loss | ms | x CE | x CE quartiles | peak mem x CE |', '|---|---|---|---|---|---|']
    for r in rows:
        iqr = f"{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}" if 'ratio_q1' in r else ''
        lines.append(f"| {r['C']} | {r['loss']} | {r['ms']:.3f} | {r['ratio']:.2f} | {iqr} | {_fmt(r['mem_ratio'])} |")
    return '\n'.join(lines) + '\n'

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--classes', default='10,100,1000,8142')
    ap.add_argument('--batch', type=int, default=512)
    ap.add_argument('--repeats', type=int, default=30)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=None, help='JSON output (default benchmarks/results/loss_speed_<machine>.json)')
    ap.add_argument('--quick', action='store_true', help='C=10,1000 and 5 repeats (a syntax/smoke check)')
    ap.add_argument('--clock', choices=sorted(CLOCKS), default='wall',
                    help="wall: elapsed time; cpu: the thread's CPU time (CPU only; blind to time spent preempted on a loaded machine)")
    ap.add_argument('--losses', default=None, help='comma-separated row labels to time (e.g. ours,ours(binning=ura)); default: every row')
    a = ap.parse_args(argv)
    classes = [int(c) for c in a.classes.split(',')]
    if a.quick: classes, a.repeats = [10, 1000], 5
    names = [(n, {}) for n in LOSSES if n != 'ours'] + [('ours', {}), ('ours', dict(binning='ura')), ('ours', dict(use_intra=False))]
    if a.losses:
        want = a.losses.split(',')
        unknown = set(want) - {_label(n, hp) for n, hp in names}
        if unknown: ap.error(f"unknown --losses {sorted(unknown)}; rows: {', '.join(_label(n, hp) for n, hp in names)}")
        names = [(n, hp) for n, hp in names if _label(n, hp) in want]
    machine = os.environ.get('LTPAPER_MACHINE') or (torch.cuda.get_device_name() if a.device == 'cuda' else f'cpu{os.cpu_count()}-{platform.machine()}')
    load_start = _loadavg()
    if a.clock == 'cpu' and a.device != 'cpu': ap.error('--clock cpu measures CPU time: use it with --device cpu')
    rows = bench(classes, a.batch, a.repeats, a.device, names, a.clock)
    meta = dict(batch=a.batch, repeats=a.repeats, clock=a.clock, load_avg_start=load_start, load_avg_end=_loadavg(),
                capability=torch.backends.cpu.get_cpu_capability() if a.device == 'cpu' else None,
                pins={k: os.environ.get(k) for k in PINS},          # set by ltpaper.numerics when run under it
                device=a.device, machine=machine, torch=torch.__version__,
                threads=torch.get_num_threads(), hostname=socket.gethostname(), date=time.strftime('%Y-%m-%d %H:%M'))
    slug = machine.replace(' ', '_').replace('/', '_')
    out = Path(a.out) if a.out else Path(__file__).parent / 'results' / f'loss_speed_{slug}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    out.with_suffix('.md').write_text(to_markdown(rows, meta))
    print(f'wrote {out} and {out.with_suffix(".md")}')

if __name__ == '__main__': main()
