"""What a practitioner relies on when training with a loss of the tables: LDAM gets LDAM-DRW's normalised head and
learns; `train` records per-sample weights only for losses that have them."""
import tempfile

import pytest
import torch

from ltpaper.losses import build_loss
from ltpaper.checkpoint import load_checkpoint
from ltpaper.record import WeightMonitor, monitors_weights
from ltpaper.train import train

from helpers import FMNIST, smoke

torch.set_num_threads(1)
need_fmnist = pytest.mark.skipif(not (FMNIST/'train-images-idx3-ubyte.gz').is_file(), reason="Debian's dataset-fashion-mnist not installed")


@need_fmnist
def test_ldam_trains_on_the_normed_head(tmp_path):
    "s = 30 needs the cosine head: with it a few epochs on 800 Fashion-MNIST-LT images reach ~42-54 % (chance: 10 %)."
    m = train(smoke(tmp_path, loss='ldam', epochs=4, milestones=[3], limit_train=800, imbalance_factor=10))
    assert m['last']['top1'] > 30, m['last']['top1']
    sd = load_checkpoint(tmp_path/'checkpoint.pt')['model']
    head = [k for k in sd if k.endswith('weight')][-1]
    assert sd[head].shape[1] == 10 and head.replace('weight', 'bias') not in sd, head    # NormedLinear: (features, C), no bias
    assert m['history'][-1].get('weights') is None                                      # LDAM has no per-sample weights


@need_fmnist
def test_other_losses_keep_the_plain_head(tmp_path):
    train(smoke(tmp_path, loss='softmax', epochs=1, milestones=[], lr_decay=[], warmup_epochs=0, limit_train=200))
    sd = load_checkpoint(tmp_path/'checkpoint.pt')['model']
    head = [k for k in sd if k.endswith('weight')][-1]
    assert sd[head].shape[0] == 10 and head.replace('weight', 'bias') in sd


def test_weight_monitor_only_takes_per_sample_weights():
    y = torch.tensor([0, 1, 2, 2])
    focal = build_loss('focal', [10, 5, 2])
    for w in (None, torch.rand(4, 3), torch.rand(3)):            # absent, (B, C) or (C,) weights are not monitored
        focal.last_weights = w
        mon = WeightMonitor(3, 'cpu')
        mon.update(focal, y)
        assert mon.summary() is None
    assert not monitors_weights(focal, 'focal')
    ours = build_loss('ours', [10, 5, 2])
    ours(torch.randn(4, 3), y)
    assert monitors_weights(ours, 'ours')
    class Flagged(torch.nn.Module):
        per_sample_weights = True
    assert monitors_weights(Flagged(), 'anything') and not monitors_weights(type('F', (Flagged,), {'per_sample_weights': False})(), 'ours')


@need_fmnist
def test_a_loss_with_matrix_weights_trains(tmp_path, monkeypatch):
    "An `ours` loss whose `last_weights` is (B, C) (not per-sample) is skipped by the monitor instead of breaking the loop."
    import ltpaper.train as tr
    orig = tr.build_loss
    def build(name, counts, **kw):
        lf = orig(name, counts, **kw)
        hook = lambda mod, inp, out: setattr(mod, 'last_weights', torch.ones_like(inp[0]))
        lf.register_forward_hook(hook)
        return lf
    monkeypatch.setattr(tr, 'build_loss', build)
    m = train(smoke(tmp_path, loss='ours', epochs=1, milestones=[], lr_decay=[], warmup_epochs=0, limit_train=200))
    assert m['history'][0].get('weights') is None
