"""`ours` eager vs `torch.compile`d, forward+backward, against F.cross_entropy in the same process.

    python benchmarks/compile_loss.py [--classes 1000,8142] [--batch 512] [--repeats 50] [--device cuda|cpu] [--with-ura] [--out FILE]

On a GPU the loss is launch-bound (many small kernels for the AURA block statistics): compiling it fuses them.
Checks first that the compiled loss gives the eager loss's values, weights and gradients over a few stateful
steps (both start from the same state), then times each variant (median, after warm-up and compilation) and
prints its ratio to cross-entropy. Writes a JSON with the rows when --out is given.
"""
import argparse, json, sys, time
from pathlib import Path
import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ltpaper.losses import build_loss
from loss_speed import counts_for, time_fn   # the same timing (warm-up, CUDA syncs, median in ms)

def main(ns):
    dev = ns.device
    rows, t0 = [], time.time()
    for C in [int(c) for c in ns.classes.split(',')]:
        g = torch.Generator().manual_seed(0); counts = counts_for(C)
        p = torch.tensor(counts, dtype=torch.float) / sum(counts)
        batches = [((torch.randn(ns.batch, C, generator=g) * 2).to(dev), torch.multinomial(p, ns.batch, replacement=True, generator=g).to(dev))
                   for _ in range(4)]
        for hp in [{}] + ([{'binning': 'ura'}] if ns.with_ura else []):
            eager, comp = build_loss('ours', counts, **hp).to(dev), build_loss('ours', counts, **hp).to(dev)
            comp.load_state_dict(eager.state_dict()); cfn = torch.compile(comp, fullgraph=True)
            tc = time.perf_counter()
            for z, y in batches:                                  # same values, weights and gradients, step by step
                za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
                va, vb = eager(za, y), cfn(zb, y); va.backward(); vb.backward()
                torch.testing.assert_close(vb, va, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(zb.grad, za.grad, rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(comp.last_weights, eager.last_weights, rtol=1e-4, atol=1e-5)
            compile_s = time.perf_counter() - tc
            z0 = batches[0][0].clone().requires_grad_(); y0 = batches[0][1]
            def fb(f):
                def run(): z0.grad = None; f(z0, y0).backward()
                return run
            ce = time_fn(fb(lambda z, y: F.cross_entropy(z, y)), ns.repeats, dev)
            te = time_fn(fb(eager), ns.repeats, dev)
            tcmp = time_fn(fb(cfn), ns.repeats, dev)
            r = dict(C=C, hparams=hp, ce_ms=round(ce, 4), eager_ms=round(te, 4), compiled_ms=round(tcmp, 4),
                     eager_x_ce=round(te / ce, 2), compiled_x_ce=round(tcmp / ce, 2), speedup=round(te / tcmp, 2),
                     first_steps_with_compile_s=round(compile_s, 1))
            rows.append(r); print(json.dumps(r), flush=True)
    meta = dict(device=torch.cuda.get_device_name() if dev == 'cuda' else 'cpu', torch=torch.__version__, batch=ns.batch,
                repeats=ns.repeats, wall_s=round(time.time() - t0, 1))
    if ns.out: Path(ns.out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(json.dumps(meta))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--classes', default='1000,8142')
    ap.add_argument('--batch', type=int, default=512)
    ap.add_argument('--repeats', type=int, default=50)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=None)
    ap.add_argument('--with-ura', action='store_true', help='also time R+A+U (uniform bins)')
    main(ap.parse_args())
