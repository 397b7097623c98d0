"""Training throughput of ResNet-32 (batch 128, CIFAR-shaped random uint8 data): model step vs full epochs, in one process.

    python benchmarks/train_speed.py [--quick] [--threads 2] [--batch 128] [--device cpu|cuda] [--out FILE]

Baseline: the pure model step (forward + backward + SGD on one fixed, already normalised batch; NCHW, fp32,
softmax cross-entropy). Every variant is timed in rounds alternating with the baseline (A B A B ...), and each
reports its median images/s and the ratio to the baseline's median from the same rounds (this machine is shared
and noisy, so only same-process ratios mean anything):

- model step, channels_last;
- model step with the `ours` loss (R+A+AU, window estimator) instead of softmax: the loss's step overhead;
- a training epoch through the fast path (`make_loader(fast=True)`: the uint8 set as one tensor, batched crop/flip),
  with the real `train_one_epoch` (gradient clipping, non-finite check);
- the same epoch through the library's per-image torchvision path (`make_loader(fast=False)`, DataLoader);
- the same epoch through an LDAM-style per-image PIL pipeline (PIL images, RandomCrop/Flip/ToTensor/Normalize);
- small_resnet on 1×28×28 batches (the `cpu` profile's model), NCHW and channels_last.

Writes JSON to --out (default benchmarks/results/train_speed_<tag>.json, tag = cpu<cores> or the GPU name) and a
Markdown table next to it. `--quick` (1 thread unless --threads, one step per block, 2 rounds) takes well under a
minute on an idle 2-core machine.

On a shared 2-core machine, 2 OpenMP threads can collapse (measured here: ResNet-32 steps went from ~240 to ~30
images/s while other jobs ran); `OMP_WAIT_POLICY=PASSIVE` softened it (70-130 images/s). Run the full benchmark
on an otherwise idle machine.
"""
import argparse, json, os, platform, socket, statistics, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from PIL import Image
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset

from ltpaper.data import LTDataset, longtail_counts, make_loader
from ltpaper.losses import build_loss
from ltpaper.models import build_model
from ltpaper.config import TrainConfig
from ltpaper.train import train_one_epoch

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def random_cifar(n, seed=0, num_classes=10):
    "An LTDataset of n random CIFAR-shaped uint8 images with long-tailed labels (IF 100 proportions)."
    g = torch.Generator().manual_seed(seed)
    counts = longtail_counts(5000, num_classes, 100)
    p = torch.tensor(counts, dtype=torch.float) / sum(counts)
    targets = torch.multinomial(p, n, replacement=True, generator=g)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return LTDataset('cifar10_lt', 'train', targets, counts, num_classes, 3, 32, CIFAR_MEAN, CIFAR_STD, 'crop4_flip', images=images)


class PILCifar(Dataset):
    "LDAM-DRW's pipeline: HWC uint8 -> PIL image -> RandomCrop(32, 4) + flip + ToTensor + Normalize, per image."
    def __init__(self, ds):
        self.imgs = ds.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = ds.targets.tolist()
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    def __len__(self): return len(self.targets)
    def __getitem__(self, i): return self.tf(Image.fromarray(self.imgs[i])), self.targets[i], i


class OnDevice:
    "A DataLoader whose batches are moved to the device (len() = batches per epoch)."
    def __init__(self, dl, device): self.dl, self.device = dl, device
    def __len__(self): return len(self.dl)
    def __iter__(self):
        for x, y, i in self.dl: yield x.to(self.device), y.to(self.device), i.to(self.device)


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def timed(fn, device):
    sync(device); t = time.perf_counter(); n = fn(); sync(device)
    return n / (time.perf_counter() - t)       # images/s


def paired(base, variant, rounds, device, warmup=1):
    "Alternate baseline and variant `rounds` times; medians of their images/s."
    for _ in range(warmup): base(); variant()
    b, v = [], []
    for _ in range(rounds):
        b.append(timed(base, device)); v.append(timed(variant, device))
    return statistics.median(b), statistics.median(v)


def make_step(model, x, y, loss_fn, idx=None, steps=1):
    "A closure doing `steps` forward+backward+SGD steps on the fixed batch; returns the images processed."
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    def run():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y, idx).backward()
            opt.step()
        return steps * len(y)
    return run


def ce(logits, y, index=None): return F.cross_entropy(logits, y)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quick', action='store_true', help='few steps and rounds (a smoke check, < 60 s on 2 cores)')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default 2, the cores of the reference machine; 1 with --quick)')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--out', default=None, help='JSON output path')
    a = ap.parse_args(argv)
    a.threads = a.threads or (1 if a.quick else 2)   # a quick smoke check should not fight other jobs for the cores
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    steps, rounds, n_epoch = (1, 2, a.batch) if a.quick else (5, 7, 10 * a.batch)
    tag = torch.cuda.get_device_name(device).replace(' ', '_') if device.type == 'cuda' else f'cpu{os.cpu_count()}'
    out = Path(a.out) if a.out else ROOT / 'benchmarks' / 'results' / f'train_speed_{tag}.json'
    t_all = time.perf_counter()

    torch.manual_seed(0)
    ds = random_cifar(n_epoch)
    counts = ds.class_counts
    xb = torch.randn(a.batch, 3, 32, 32, device=device)
    yb = ds.targets[:a.batch].to(device)
    ib = torch.arange(a.batch, device=device)
    res = {}

    def record(name, base_ips, ips, note):
        res[name] = dict(images_per_s=ips, baseline_images_per_s=base_ips, ratio_to_baseline=ips / base_ips, note=note)
        print(f"{name:<28} {ips:>9.1f} img/s   baseline {base_ips:>8.1f} img/s   ratio {ips / base_ips:6.3f}   {note}", flush=True)

    def fresh(channels_last=False):
        torch.manual_seed(0)
        return build_model('resnet32', 10, in_channels=3, channels_last=channels_last).to(device)

    base = make_step(fresh(), xb, yb, ce, steps=steps)
    # 1) memory format
    xcl = xb.contiguous(memory_format=torch.channels_last)
    b, v = paired(base, make_step(fresh(True), xcl, yb, ce, steps=steps), rounds, device)
    record('model_step_channels_last', b, v, 'forward+backward+SGD, channels_last vs NCHW')
    res['model_step'] = dict(images_per_s=b, note='baseline: forward+backward+SGD on a fixed batch, NCHW fp32, softmax CE')
    # 2) loss overhead
    ours = build_loss('ours', counts).to(device)
    b, v = paired(base, make_step(fresh(), xb, yb, ours, idx=ib, steps=steps), rounds, device)
    record('model_step_loss_ours', b, v, "loss 'ours' (R+A+AU, window) vs softmax; 1/ratio = step-time overhead")
    # 3) full epochs
    cfg = TrainConfig(dataset='cifar10_lt', model='resnet32', loss='softmax', channels_last=False, grad_clip=2.0, device=a.device)
    def epoch_runner(loader):
        model = fresh()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
        ep = [0]
        def run():
            ep[0] += 1
            if hasattr(loader, 'set_epoch'): loader.set_epoch(ep[0])
            return train_one_epoch(model, model, loader, build_loss('softmax', counts), opt, cfg)[1]
        return run
    base_e = make_step(fresh(), xb, yb, ce, steps=n_epoch // a.batch)   # same number of images as one epoch
    fast = make_loader(ds, a.batch, train=True, device=a.device, fast=True)
    b, v = paired(base_e, epoch_runner(fast), rounds, device)
    record('epoch_fast_path', b, v, f'train_one_epoch over {n_epoch} images, make_loader(fast=True)')
    tv = make_loader(ds, a.batch, train=True, device=a.device, fast=False, num_workers=0)
    b, v = paired(base_e, epoch_runner(tv), rounds, device)
    record('epoch_torchvision_path', b, v, 'same epoch, make_loader(fast=False): per-image torchvision transforms, DataLoader (0 workers)')
    pil = OnDevice(DataLoader(PILCifar(ds), batch_size=a.batch, shuffle=True, num_workers=0), device)
    b, v = paired(base_e, epoch_runner(pil), rounds, device)
    record('epoch_pil_pipeline', b, v, 'same epoch, LDAM-style per-image PIL pipeline (DataLoader, 0 workers)')
    # 4) small_resnet, the cpu profile's model, on Fashion-MNIST-shaped batches
    x1 = torch.randn(a.batch, 1, 28, 28, device=device)
    def small(channels_last):
        torch.manual_seed(0)
        m = build_model('small_resnet', 10, in_channels=1, channels_last=channels_last).to(device)
        return make_step(m, x1.contiguous(memory_format=torch.channels_last) if channels_last else x1, yb, ce, steps=steps * 3)
    b, v = paired(base, small(False), rounds, device)
    record('small_resnet_step', b, v, 'small_resnet, 1x28x28, NCHW (ratio vs the ResNet-32 baseline)')
    b, v = paired(base, small(True), rounds, device)
    record('small_resnet_step_cl', b, v, 'small_resnet, 1x28x28, channels_last')

    summary = dict(
        step_overhead_ours_vs_softmax=1 / res['model_step_loss_ours']['ratio_to_baseline'],
        speedup_channels_last=res['model_step_channels_last']['ratio_to_baseline'],
        epoch_fast_vs_model_step=res['epoch_fast_path']['ratio_to_baseline'],
        epoch_fast_vs_pil=res['epoch_fast_path']['images_per_s'] / res['epoch_pil_pipeline']['images_per_s'],
        epoch_fast_vs_torchvision=res['epoch_fast_path']['images_per_s'] / res['epoch_torchvision_path']['images_per_s'])
    doc = dict(benchmark='train_speed', tag=tag, hostname=socket.gethostname(), device=str(device), torch=torch.__version__,
               python=platform.python_version(), threads=a.threads, batch=a.batch, quick=a.quick, steps_per_block=steps,
               rounds=rounds, epoch_images=n_epoch, date=time.strftime('%Y-%m-%d %H:%M'), results=res, summary=summary,
               seconds=time.perf_counter() - t_all)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp'); tmp.write_text(json.dumps(doc, indent=1)); os.replace(tmp, out)
    md = [f"## Training throughput ({tag}, {a.threads} threads, batch {a.batch}{', quick' if a.quick else ''})", '',
          '| measurement | images/s | baseline images/s | ratio | what |', '|---|---|---|---|---|',
          f"| model_step (baseline) | {res['model_step']['images_per_s']:.1f} | | 1 | {res['model_step']['note']} |"]
    md += [f"| {k} | {r['images_per_s']:.1f} | {r['baseline_images_per_s']:.1f} | {r['ratio_to_baseline']:.3f} | {r['note']} |"
           for k, r in res.items() if k != 'model_step']
    md += ['', ', '.join(f'{k} = {v:.2f}' for k, v in summary.items()), '']
    out.with_suffix('.md').write_text('\n'.join(md))
    print('; '.join(f'{k} {v:.2f}' for k, v in summary.items()))
    print(f'wrote {out} ({doc["seconds"]:.0f} s)')


if __name__ == '__main__': main()
