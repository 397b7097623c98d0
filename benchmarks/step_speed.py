"""Eager vs compiled training steps (ResNet-32, batch 128, CIFAR-shaped inputs) for softmax and `ours`, in one process.

    python benchmarks/step_speed.py [--device cuda|cpu] [--model resnet32] [--batch 128] [--classes 10]
                                    [--losses softmax,ours] [--mode compiled|aot_eager] [--steps 50] [--rounds 5] [--out FILE]

For each loss, on the same batches already on the device (a pool of 8, cycled):
- eager: the loop that `train` runs with step='eager' (`train_one_epoch`: forward, loss, backward, clipping at 2,
  SGD with momentum 0.9 and weight decay 2e-4, a host check of the loss every 25 steps on CUDA);
- compiled: `TrainStep` in `--mode` (`fast_epoch`: what step='compiled' runs; on CUDA one CUDA-graph replay per step).
First a check: both start from the same weights and take 5 steps on the same batches; the largest weight
difference and the loss difference are recorded (float rounding only; not a pass/fail). Then the compilation time
(the first compiled steps), then `--rounds` rounds alternating eager and compiled epochs of `--steps` steps. Reported:
median ms per step of each, the speed-up eager/compiled, and per mode the ratio ours/softmax (the issue's target
on a GPU: ours <= 1.10x softmax compiled). Writes JSON to --out (default benchmarks/results/step_speed_<tag>.json)
and a Markdown table next to it after each loss (a run cut short keeps the losses done); prints the table.
"""
import argparse, copy, json, os, socket, statistics, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ltpaper.config import TrainConfig
from ltpaper.data import longtail_counts
from ltpaper.losses import build_loss
from ltpaper.models import build_model
from ltpaper.train.step import TrainStep, describe_step, fast_epoch
from ltpaper.train import train_one_epoch


def batches(n, batch, classes, channels, size, device, seed=0):
    "`n` random batches (x normalised float, y long-tailed, index) on `device`."
    g = torch.Generator().manual_seed(seed)
    counts = longtail_counts(5000, classes, 100)
    p = torch.tensor(counts, dtype=torch.float) / sum(counts)
    out = []
    for k in range(n):
        x = torch.randn(batch, channels, size, size, generator=g)
        y = torch.multinomial(p, batch, replacement=True, generator=g)
        out.append((x.to(device), y.to(device), (torch.arange(batch) + k * batch).to(device)))
    return out, counts


def parts(a, loss, counts, device):
    "(model, loss, SGD) as `train` builds them; the same initial weights every call."
    torch.manual_seed(0)
    m = build_model(a.model, a.classes, in_channels=a.channels, channels_last=True).to(device)
    lf = build_loss(loss, counts).to(device)
    return m, lf, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def one_loss(a, loss, pool, counts, device, cfg):
    "The check, the compile time and the alternating rounds of one loss: a result row."
    sync_every = 25 if device.type == 'cuda' else 1
    e, c = parts(a, loss, counts, device), parts(a, loss, counts, device)
    ts = TrainStep(*c, grad_clip=cfg.grad_clip, channels_last=True, batch_size=a.batch, mode=a.mode)
    check = pool[:5]
    tc = time.perf_counter()
    lc = fast_epoch(ts, check)[0]                      # the first steps compile
    sync(device)
    compile_s = time.perf_counter() - tc
    le = train_one_epoch(e[0], e[0], check, e[1], e[2], cfg, sync_every=sync_every)[0]
    dw = max((p.double() - q.double()).abs().max().item() for p, q in zip(e[0].parameters(), c[0].parameters()))
    loader = [pool[k % len(pool)] for k in range(a.steps)]
    t_e, t_c = [], []
    for _ in range(a.rounds):
        for runner, times in ((lambda: train_one_epoch(e[0], e[0], loader, e[1], e[2], cfg, sync_every=sync_every), t_e),
                              (lambda: fast_epoch(ts, loader), t_c)):
            sync(device)
            t0 = time.perf_counter()
            runner()                                  # each ends with a host read of its totals
            sync(device)
            times.append((time.perf_counter() - t0) / a.steps * 1e3)
    me, mc = statistics.median(t_e), statistics.median(t_c)
    return dict(loss=loss, eager_ms=round(me, 4), compiled_ms=round(mc, 4), speedup=round(me / mc, 3), compile_s=round(compile_s, 1),
                check_steps=len(check), check_max_abs_dw=dw, check_loss_diff=abs(le - lc), eager_ms_rounds=[round(t, 4) for t in t_e],
                compiled_ms_rounds=[round(t, 4) for t in t_c])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--model', default='resnet32')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--classes', type=int, default=10)
    ap.add_argument('--channels', type=int, default=3)
    ap.add_argument('--size', type=int, default=32, help='image height and width')
    ap.add_argument('--losses', default='softmax,ours', help='comma-separated; the first is the baseline of the ours/x ratios')
    ap.add_argument('--mode', default='compiled', choices=['compiled', 'aot_eager'], help='the TrainStep mode timed against eager')
    ap.add_argument('--steps', type=int, default=50, help='steps per timed epoch')
    ap.add_argument('--rounds', type=int, default=5, help='alternating eager/compiled rounds (median reported)')
    ap.add_argument('--threads', type=int, default=0, help='>0: torch.set_num_threads')
    ap.add_argument('--out', default=None, help='JSON output path (a Markdown table is written next to it)')
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True           # as `train` sets it (not deterministic)
    tag = torch.cuda.get_device_name(device).replace(' ', '_') if device.type == 'cuda' else f'cpu{os.cpu_count()}'
    out = Path(a.out) if a.out else ROOT / 'benchmarks' / 'results' / f'step_speed_{tag}.json'
    cfg = TrainConfig(model=a.model, batch_size=a.batch, grad_clip=2.0, channels_last=True, device=a.device)
    pool, counts = batches(8, a.batch, a.classes, a.channels, a.size, device)
    rows = []
    for loss in a.losses.split(','):
        rows.append(one_loss(a, loss, pool, counts, device, cfg))
        doc = write(a, rows, tag, device, out)
    return doc


def write(a, rows, tag, device, out) -> dict:
    "The JSON and Markdown of the rows so far; prints the table."
    base = rows[0]
    ratios = {f"{r['loss']}/{base['loss']} {m}": round(r[f'{m}_ms'] / base[f'{m}_ms'], 3) for r in rows[1:] for m in ('eager', 'compiled')}
    doc = dict(benchmark='step_speed', tag=tag, hostname=socket.gethostname(), device=str(device), torch=torch.__version__,
               model=a.model, batch=a.batch, classes=a.classes, input=f'{a.channels}x{a.size}x{a.size}', steps=a.steps, rounds=a.rounds,
               compiled=describe_step(a.mode, device), rows=rows, ratios=ratios)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp'); tmp.write_text(json.dumps(doc, indent=1)); os.replace(tmp, out)
    md = [f"## Training step, eager vs {doc['compiled']} ({tag}, {a.model}, batch {a.batch} of {doc['input']}, C = {a.classes})", '',
          '| loss | eager ms/step | compiled ms/step | speed-up | compile s | max abs dw after 5 steps |', '|---|---|---|---|---|---|']
    md += [f"| {r['loss']} | {r['eager_ms']:.3f} | {r['compiled_ms']:.3f} | {r['speedup']:.2f} | {r['compile_s']:.1f} | "
           f"{r['check_max_abs_dw']:.2e} |" for r in rows]
    md += ['', ', '.join(f'{k} = {v:.3f}' for k, v in ratios.items()), '']
    out.with_suffix('.md').write_text('\n'.join(md))
    print('\n'.join(md), flush=True)
    return doc


if __name__ == '__main__':
    main()
