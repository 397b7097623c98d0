"""What a practitioner relies on when training with a loss of the tables: LDAM gets LDAM-DRW's normalised head and
learns; `train` records per-sample weights only for losses that have them."""
import tempfile

import pytest
import torch

from ltpaper.losses import build_loss
from ltpaper.train.checkpoint import load_checkpoint
from ltpaper.train.record import WeightMonitor, monitors_weights
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
    import ltpaper.train.loop as tr
    orig = tr.build_loss
    def build(name, counts, **kw):
        lf = orig(name, counts, **kw)
        hook = lambda mod, inp, out: setattr(mod, 'last_weights', torch.ones_like(inp[0]))
        lf.register_forward_hook(hook)
        return lf
    monkeypatch.setattr(tr, 'build_loss', build)
    m = train(smoke(tmp_path, loss='ours', epochs=1, milestones=[], lr_decay=[], warmup_epochs=0, limit_train=200))
    assert m['history'][0].get('weights') is None


# ---------------------------------------------------------------- building and evaluating a criterion
def test_build_loss_without_counts_works_where_none_are_read_and_says_which_otherwise():
    from ltpaper.losses import LOSSES, counts_free
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert counts_free() == ['focal', 'ghm', 'softmax']
    for name in counts_free():
        assert torch.equal(build_loss(name)(z, y), build_loss(name, [9, 5, 2, 1])(z, y)), name
    assert torch.allclose(build_loss('softmax')(z, y), torch.nn.functional.cross_entropy(z, y))
    for name in sorted(set(LOSSES) - set(counts_free())):
        with pytest.raises(ValueError) as e:
            build_loss(name)
        msg = str(e.value)
        assert '\n' not in msg and f"build_loss({name!r}) needs class_counts" in msg and 'focal, ghm, softmax' in msg, msg


def test_a_registered_criterion_follows_model_eval_and_no_grad_leaves_no_graph():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.criterion = torch.nn.Linear(5, 3), build_loss('ours', [50, 10, 2])
    torch.manual_seed(0)
    net, x, y = Net(), torch.randn(12, 5), torch.tensor([0, 1, 2] * 4)
    net.criterion(net.body(x), y)                                     # train(): statistics move
    state = {k: v.clone() for k, v in net.criterion.state_dict().items()}
    same = lambda: all(torch.equal(state[k], v) for k, v in net.criterion.state_dict().items())
    net.eval()
    assert not net.criterion.training                                  # model.eval() reaches the registered criterion
    v = net.criterion(net.body(x), y)
    assert same() and v.requires_grad                                 # eval with autograd on: statistics kept, graph kept
    with torch.no_grad():
        v = net.criterion(net.body(x), y)
    assert same() and not v.requires_grad and v.grad_fn is None       # evaluation under no_grad: no graph
    beside = build_loss('ours', [50, 10, 2])                           # a criterion kept beside the model
    net.eval()
    assert beside.training                                             # is not reached by model.eval() (as any nn.Module)
    net.train()
    assert net.criterion.training
