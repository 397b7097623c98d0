"""Helpers shared by several test files (tests/conftest.py puts this folder on sys.path): `from helpers import ...`.
Test files never import from each other."""
import contextlib, gzip, io, json, os, textwrap
from pathlib import Path

import numpy as np
import torch

from ltpaper import data as D
from ltpaper.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path('/usr/share/datasets/fashion-mnist')      # Debian's dataset-fashion-mnist


# ---------------------------------------------------------------- running commands in-process and in subprocesses
def cli(f, argv):
    "Run a cli_* function in-process: (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = f(argv)
    return code, out.getvalue(), err.getvalue()


def env():
    "Environment of a child process that imports this checkout's ltpaper, single-threaded, outside torch.distributed."
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
    e.pop('WORLD_SIZE', None)
    e.pop('RANK', None)
    return e


# a training process that hangs after `sys.argv[2]` forwards past its first checkpoint, for SIGKILL tests
DRIVER = textwrap.dedent('''
    import json, os, sys, time
    import ltpaper.train.loop as tr
    cfg = tr.TrainConfig(**json.loads(sys.argv[1]))
    hang_after = int(sys.argv[2])   # training forwards after the first checkpoint before the process hangs (-1: never)
    if hang_after >= 0:
        orig = tr.build_model
        def build_model(*a, **k):
            m = orig(*a, **k)
            n = [0]
            def hook(mod, inp):
                if mod.training and os.path.exists(os.path.join(cfg.out_dir, 'checkpoint.pt')):
                    n[0] += 1
                    if n[0] > hang_after:
                        open(os.path.join(cfg.out_dir, 'HANGING'), 'w').close()
                        time.sleep(600)
            m.register_forward_pre_hook(hook)
            return m
        tr.build_model = build_model
    tr.train(cfg)
''')


# ---------------------------------------------------------------- smoke-sized training runs
def smoke(out_dir, **kw) -> TrainConfig:
    "A TrainConfig of a few-second CPU run on Fashion-MNIST-LT (small_resnet, 500/200 images); `kw` overrides fields."
    base = dict(dataset='fmnist_lt', imbalance_factor=100, model='small_resnet', loss='softmax', epochs=2, batch_size=64, lr=0.05,
                warmup_epochs=1, milestones=[1], lr_decay=[0.1], limit_train=500, limit_test=200, device='cpu', threads=1,
                out_dir=str(out_dir), progress=False)
    return TrainConfig(**{**base, **kw})


def comparable(m: dict) -> dict:
    "The metrics without wall-clock and run-location fields."
    m = json.loads(json.dumps(m))
    for h in m['history']: h.pop('epoch_time_s')
    for k in ('provenance', 'wall_time_s', 'images_per_s'): m.pop(k)
    for k in ('out_dir', 'resume'): m['config'].pop(k)
    return m


# ---------------------------------------------------------------- Fashion-MNIST files in the real IDX format
def idx_bytes(arr, magic):
    "The bytes of an IDX file (the format of MNIST and Fashion-MNIST) holding `arr`."
    return magic.to_bytes(4, 'big') + b''.join(int(s).to_bytes(4, 'big') for s in arr.shape) + arr.astype(np.uint8).tobytes()

def write_fmnist(raw, per_class=8, test_per_class=2, gz=True):
    "A tiny Fashion-MNIST in `raw` (train and t10k images and labels); returns {split: (images, labels)}."
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (('train', per_class), ('t10k', test_per_class)):
        y = np.tile(np.arange(10), n)
        x = (np.arange(len(y))[:, None, None] + np.zeros((1, 28, 28), int)) % 256
        for kind, arr, magic in (('images-idx3', x, D.IDX_IMAGES), ('labels-idx1', y, D.IDX_LABELS)):
            name = f'{split}-{kind}-ubyte'
            b = idx_bytes(arr, magic)
            if gz: (raw/f'{name}.gz').write_bytes(gzip.compress(b))
            else: (raw/name).write_bytes(b)
        out[split] = (x, y)
    return out


class NaNFromEpoch2(torch.nn.Module):
    "Softmax CE that is infinite in the second of two epochs (progress 1/2; a buffer: set in place, no recompiling)."
    def __init__(self, class_counts):
        super().__init__()
        self.register_buffer('progress', torch.zeros(()))
    def set_progress(self, frac): self.progress.fill_(frac)
    def forward(self, logits, y, index=None):
        return torch.nn.functional.cross_entropy(logits, y) / (1 - 2 * self.progress)


class Stop(Exception):
    "Raised by `stop_after_first_checkpoint`: a run stopped as if killed."

def stop_after_first_checkpoint(monkeypatch):
    "Make `train` stop (as if killed) right after writing the checkpoint of epoch 1."
    from ltpaper.train import Run
    orig = Run._record
    def record(self, *a, **k):
        out = orig(self, *a, **k)
        if self.epoch == 0: raise Stop()
        return out
    monkeypatch.setattr(Run, '_record', record)
