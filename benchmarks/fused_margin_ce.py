"""What a fused margin cross-entropy would give `ours`, and what it would cost: its time and its bits.

    python benchmarks/fused_margin_ce.py [--classes 1000,8142] [--batch 512] [--repeats 200] [--out FILE]

`ours` computes z' = z + M (margins), then F.cross_entropy(z', y, reduction='none'); autograd runs the backward as
nll_loss_backward (a zero-filled (B, C) buffer and a scatter) followed by log_softmax_backward (one fused pass). The
prototype here, `FusedMarginCE`, saves log_softmax(z') and writes the gradient as exp(log p) * c_i (c_i: the sample's
weight over B; an exp pass and an in-place scale) less c_i at the target (a scatter): the best eager PyTorch gives
without a kernel of its own, which a truly one-pass version would need. It is a prototype for this measurement
only: the package does not use it.

For each C it prints, in interleaved triples (F.cross_entropy, `ours`, `ours` with the fused cross-entropy; the order
rotates; this thread's CPU time), the median ratios (with quartiles) to F.cross_entropy and of the fused to the unfused, triple by triple, and
the bits: how many gradient elements of the fused backward differ from autograd's on this process's ATen kernels,
and by how much at most. Run it under the pins (`python -m ltpaper.numerics -- python benchmarks/...`) and with
ATEN_CPU_CAPABILITY=default to see both kernel sets. Writes JSON and a Markdown table (default
benchmarks/results/fused_margin_ce_<cpu tag>-<kernels>.{json,md})."""
import argparse, json, os, platform, statistics, sys, time
from datetime import datetime, timezone
from pathlib import Path
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/'benchmarks'))
from loss_speed import counts_for
from ltpaper.losses import build_loss
from ltpaper.losses.ours import margin_logits
from ltpaper.numerics import PINS


class FusedMarginCE(torch.autograd.Function):
    "Per-sample CE(z', y) of margin logits z' (already built); the backward in one pass over the saved log-probabilities."
    @staticmethod
    def forward(ctx, z_adj, y):
        logp = torch.log_softmax(z_adj, 1)
        ctx.save_for_backward(logp, y)
        return -logp.gather(1, y[:, None]).squeeze(1)

    @staticmethod
    def backward(ctx, grad):                       # grad (B,): d loss / d ce_i, e.g. w_i / B
        logp, y = ctx.saved_tensors
        g = logp.exp().mul_(grad[:, None])         # p * c_i everywhere ...
        g.scatter_add_(1, y[:, None], -grad[:, None])   # ... less c_i at the target
        return g, None


def ours_fused(loss, logits, target):
    "`ours`' forward with its cross-entropy replaced by FusedMarginCE (the same margins, statistics and weights)."
    z, y = loss.check_inputs(logits, target)
    z_adj = margin_logits(z, y, loss.log_s().to(z.dtype), loss.gamma)
    ce = FusedMarginCE.apply(z_adj, y)
    loss.keeps_stats_for(ce)                       # the same finiteness check as `ours`' forward (all finite here)
    stats = loss.intra_stats(z, z_adj, y, None, ce.detach())
    return (stats.weights.to(ce.dtype) * ce).mean()


def bits(C, B, seed=0):
    "Gradient elements of the fused backward that differ from autograd's, and the largest difference."
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, C, generator=g) * 3).requires_grad_()
    y, w = torch.randint(0, C, (B,), generator=g), torch.rand(B, generator=g) * 5
    (w * F.cross_entropy(z, y, reduction='none')).mean().backward()
    ref, z.grad = z.grad, None
    (w * FusedMarginCE.apply(z, y)).mean().backward()
    d = z.grad != ref
    return int(d.sum()), d.numel(), float((z.grad - ref).abs().max()), float(ref.abs().max())


def bench(C, B, repeats):
    g = torch.Generator().manual_seed(0)
    counts = counts_for(C)
    p = torch.tensor(counts, dtype=torch.float) / sum(counts)
    logits = (torch.randn(B, C, generator=g) * 2).requires_grad_()
    target = torch.multinomial(p, B, replacement=True, generator=g)
    a, b = build_loss('ours', counts), build_loss('ours', counts)
    def ce(): logits.grad = None; F.cross_entropy(logits, target).backward()
    def ours(): logits.grad = None; a(logits, target).backward()
    def fused(): logits.grad = None; ours_fused(b, logits, target).backward()
    fns = dict(cross_entropy=ce, ours=ours, ours_fused=fused)
    for _ in range(5):
        for f in fns.values(): f()
    ts = {k: [] for k in fns}
    order = list(fns)
    for i in range(repeats):
        for k in order[i % 3:] + order[:i % 3]:
            t = time.thread_time(); fns[k](); ts[k].append((time.thread_time() - t) * 1e3)
    ms = {k: statistics.median(v) for k, v in ts.items()}
    def med_q(xs, ys):
        r = [x / y for x, y in zip(xs, ys)]
        q1, _, q3 = statistics.quantiles(r, n=4)
        return statistics.median(r), q1, q3
    ratio = {k: med_q(ts[k], ts['cross_entropy']) for k in ('ours', 'ours_fused')}
    ratio['fused_over_ours'] = med_q(ts['ours_fused'], ts['ours'])      # the direct comparison, triple by triple
    a2, b2 = build_loss('ours', counts), build_loss('ours', counts)   # fresh: the forward's value, same bits?
    same = all(torch.equal(a2(logits, target), ours_fused(b2, logits, target)) for _ in range(3))
    return dict(C=C, B=B, ms=ms, ratio=ratio, same_forward=same)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--classes', default='1000,8142')
    ap.add_argument('--batch', type=int, default=512)
    ap.add_argument('--repeats', type=int, default=200)
    ap.add_argument('--out')
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cap = torch.backends.cpu.get_cpu_capability()
    rows = []
    for C in (int(c) for c in a.classes.split(',')):
        r = bench(C, a.batch, a.repeats)
        n, tot, dmax, gmax = bits(C, a.batch)
        r.update(differ=n, elements=tot, max_abs_diff=dmax, max_abs_grad=gmax)
        rows.append(r)
        (o, *oq), (f, *fq), (d, *dq) = (r['ratio'][k] for k in ('ours', 'ours_fused', 'fused_over_ours'))
        print(f"C={C}: ours x{o:.2f} CE [{oq[0]:.2f}-{oq[1]:.2f}], ours with the fused CE x{f:.2f} CE [{fq[0]:.2f}-{fq[1]:.2f}], "
              f"fused / ours {d:.3f} [{dq[0]:.3f}-{dq[1]:.3f}] (the same loss values: {r['same_forward']}); gradient bits on {cap}: "
              f"{n} of {tot} elements differ from autograd's ({100 * n / tot:.1f} %), at most {dmax:.2e} (largest gradient {gmax:.2e})",
              flush=True)
    res = dict(when=datetime.now(timezone.utc).isoformat(timespec='seconds'), capability=cap,
               pins={k: os.environ.get(k) for k in PINS}, cpu=platform.processor() or platform.machine(),
               load=os.getloadavg(), rows=rows)
    tag = f"cpu{os.cpu_count()}-{platform.machine()}-{cap.lower()}"
    out = Path(a.out) if a.out else ROOT/'benchmarks'/'results'/f'fused_margin_ce_{tag}.json'
    out.write_text(json.dumps(res, indent=1) + '\n')
    md = [f"ATen kernels {cap}; B = {a.batch}; median of {a.repeats} interleaved triples, this thread's CPU time; "
          f"load average {res['load'][0]:.1f} on {os.cpu_count()} cores; medians (quartiles) of the per-triple ratios.", '',
          '| C | ours x CE | ours with the fused CE, x CE | fused / ours | gradient elements whose bits differ | largest difference |',
          '|---|---|---|---|---|---|']
    q = lambda t, f='.2f': f"{t[0]:{f}} ({t[1]:{f}}-{t[2]:{f}})"
    md += [f"| {r['C']} | {q(r['ratio']['ours'])} | {q(r['ratio']['ours_fused'])} | {q(r['ratio']['fused_over_ours'], '.3f')} | "
           f"{100 * r['differ'] / r['elements']:.1f} % | {r['max_abs_diff']:.1e} |" for r in rows]
    out.with_suffix('.md').write_text('\n'.join(md) + '\n')
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == '__main__':
    main()
