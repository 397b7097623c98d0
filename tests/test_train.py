"""Training loop: config validation, CLI errors, determinism, metrics.json, SIGKILL + resume, DDP (2 gloo processes),
non-finite loss handling. Smoke sizes: Fashion-MNIST-LT (IF 100) capped at a few hundred images, small_resnet, 1 thread."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltpaper.losses import LOSSES
from ltpaper.cli import cli_train, parse_train_args
from ltpaper.config import TrainConfig, config_hash
from ltpaper.train.checkpoint import load_checkpoint
from ltpaper.train.run_data import limit_dataset
from ltpaper.train import NonFiniteLossError, train
from ltpaper.data import build_dataset

from helpers import DRIVER, FMNIST, comparable, env, smoke

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (FMNIST / 'train-images-idx3-ubyte.gz').exists() and not (ROOT / 'data' / 'FashionMNIST').exists(),
                                reason='Fashion-MNIST files not found')


# ---------------------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize('kw,field', [
    (dict(epochs=0), 'epochs'), (dict(lr=0), 'lr'), (dict(lr=-0.1), 'lr'), (dict(batch_size=0), 'batch_size'),
    (dict(momentum=1.0), 'momentum'), (dict(weight_decay=-1), 'weight_decay'), (dict(imbalance_factor=0.5), 'imbalance_factor'),
    (dict(milestones=[160, 160], lr_decay=[0.1, 0.1]), 'milestones'), (dict(milestones=[10]), 'lr_decay'),
    (dict(lr_decay=[0.1, -1]), 'lr_decay'), (dict(grad_clip=-1), 'grad_clip'), (dict(dataset='mnist'), 'dataset'),
    (dict(loss='hinge'), 'loss'), (dict(model='vgg'), 'model'), (dict(device='gpu'), 'device'), (dict(eval_every=0), 'eval_every'),
    (dict(loss_params={'gama': 1}), 'loss_params'), (dict(loss='ours', loss_params={'bins': 0}), 'loss_params'),
    (dict(epochs='3'), 'epochs'), (dict(amp='yes'), 'amp'), (dict(limit_train=-1), 'limit_train'), (dict(val_per_class=-5), 'val_per_class'),
])
def test_bad_config_values_raise_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=rf'^TrainConfig\.{field}='):
        TrainConfig(**kw)


def test_config_normalises_types_and_hash():
    a, b = TrainConfig(imbalance_factor=100, lr=1, epochs=3.0), TrainConfig(imbalance_factor=100.0, lr=1.0, epochs=3)
    assert a == b and config_hash(a) == config_hash(b) and type(a.epochs) is int and type(a.lr) is float
    assert config_hash(a) == config_hash(TrainConfig(imbalance_factor=100, lr=1, epochs=3, out_dir='x', resume=True, threads=2))
    assert config_hash(a) != config_hash(TrainConfig(imbalance_factor=100, lr=1, epochs=4))
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['epoch'\]"): TrainConfig.from_dict({'epoch': 3})


@pytest.mark.parametrize('argv,msg', [
    (['--dataset', 'cifar5'], 'unknown dataset'), (['--loss', 'hinge'], 'unknown loss'), (['--model', 'vgg'], 'unknown model'),
    (['--epochs', '0'], 'TrainConfig.epochs=0'), (['--lr', '0'], 'TrainConfig.lr=0.0'), (['--lr', 'x'], 'expected a number'),
    (['--milestones', '160,150'], 'strictly increasing'), (['--loss-params', '{"gamma": '], 'not valid JSON'),
    (['--loss', 'ours', '--loss-params', '{"gamma": -1}'], 'gamma must be >= 0'), (['--no-such-flag'], 'unrecognized arguments'),
])
def test_cli_bad_values_one_line_exit_2(argv, msg, capsys, tmp_path):
    assert cli_train(argv + ['--out-dir', str(tmp_path / 'x')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('ltpaper train: error:') and msg in err, err
    assert not (tmp_path / 'x').exists()      # nothing was done


def test_cli_flags_cover_every_field():
    c = parse_train_args(['--loss', 'ours', '--loss-params', '{"gamma": 0.5, "binning": "ura"}', '--milestones', '[3, 5]',
                          '--lr-decay', '0.1,0.01', '--no-channels-last', '--fast-data', '--val-per-class', '10', '--data-root', '/d'])
    assert (c.loss_params, c.milestones, c.lr_decay, c.channels_last, c.fast_data, c.val_per_class, c.data_root) == \
           ({'gamma': 0.5, 'binning': 'ura'}, [3, 5], [0.1, 0.01], False, True, 10, '/d')


# ------------------------------------------------------------------------------------------------------- runs in-process

def test_determinism_schema_and_balanced_per_class(tmp_path):
    m1 = train(smoke(tmp_path / 'a', loss='ours', val_per_class=20))
    m2 = train(smoke(tmp_path / 'b', loss='ours', val_per_class=20))
    assert comparable(m1) == comparable(m2)                       # same seed -> identical metrics on CPU
    saved = json.loads((tmp_path / 'a' / 'metrics.json').read_text())
    assert saved == json.loads(json.dumps(m1))
    assert saved['schema'] == 1 and saved['status'] == 'complete' and saved['config_hash'] == config_hash(smoke(tmp_path, loss='ours', val_per_class=20))
    for rec in (saved['last'], saved['best']):
        assert len(rec['per_class']) == 10
        assert abs(sum(rec['per_class']) / 10 - rec['top1']) < 1e-9    # balanced test: per-class mean = top-1
        assert list(rec['groups']['quartile']) == ['Many', 'Medium', 'Few', 'Rare'] and list(rec['groups']['shot']) == ['Many', 'Medium', 'Few']
    assert saved['num_test'] == 200 and sum(saved['class_counts']) == saved['num_train'] <= 510
    assert saved['class_counts'] == sorted(saved['class_counts'], reverse=True) and saved['class_counts'][0] > 20 * saved['class_counts'][-1] / 2
    assert [h['epoch'] for h in saved['history']] == [1, 2] and [h['lr'] for h in saved['history']] == pytest.approx([0.05, 0.005])
    assert all(h['val_top1'] is not None and h['train_loss'] > 0 for h in saved['history'])
    assert saved['val']['best_epoch'] in (1, 2) and len(saved['val']['last_per_class']) == 10
    assert set(saved['provenance']) == {'ltpaper', 'git_commit', 'git_dirty', 'torch', 'device', 'threads', 'deterministic', 'cpu', 'hostname',
                                        'python', 'started', 'finished', 'data_dir', 'step', 'numerics'}
    m3 = train(smoke(tmp_path / 'c', loss='ours', val_per_class=20, seed=1))
    assert comparable(m3)['last'] != comparable(m1)['last']


def test_limit_dataset_keeps_tail_and_balance():
    tr = build_dataset('fmnist_lt', imbalance_factor=100, split='train')
    te = build_dataset('fmnist_lt', split='test')
    small = limit_dataset(tr, 300, balanced=False)
    counts = torch.bincount(small.targets, minlength=10)
    assert abs(len(small) - 300) <= 10 and counts.min() >= 1 and (counts[:-1] >= counts[1:]).all()
    assert len(small.images) == len(small.targets) == len(small.source_index)
    assert torch.equal(small.images[0], tr.images[small.source_index[0] == tr.source_index].squeeze(0))
    bal = limit_dataset(te, 100, balanced=True)
    assert torch.bincount(bal.targets, minlength=10).tolist() == [10] * 10
    assert limit_dataset(tr, 0, balanced=False) is tr


class NaNFromEpoch(nn.Module):
    "Cross-entropy that turns NaN from epoch `bad_epoch` on (the loop tells it the progress)."
    def __init__(self, class_counts, epochs=3, bad_epoch=2):
        super().__init__(); self.epochs, self.bad_epoch, self.frac = epochs, bad_epoch, 0.0
    def set_progress(self, frac): self.frac = frac
    def forward(self, logits, target, index=None):
        loss = F.cross_entropy(logits, target)
        return loss * float('nan') if round(self.frac * self.epochs) + 1 >= self.bad_epoch else loss


def test_nonfinite_loss_names_epoch_and_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(LOSSES, 'nan_from', NaNFromEpoch)
    with pytest.raises(NonFiniteLossError, match=r'epoch 2/3, step 1/\d+.*last good checkpoint is .*checkpoint\.pt'):
        train(smoke(tmp_path, loss='nan_from', epochs=3))
    ck = load_checkpoint(tmp_path / 'checkpoint.pt')             # weights_only=True
    assert ck['epoch'] == 1 and len(ck['history']) == 1 and not (tmp_path / 'metrics.json').exists()
    assert not list(tmp_path.glob('.*.tmp'))


def test_huge_lr_diverges(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r'at epoch 1/2, step \d+/\d+ \(lr 1e\+30\).*none \(first epoch\)'):
        train(smoke(tmp_path, lr=1e30, warmup_epochs=0, grad_clip=0))
    assert not (tmp_path / 'checkpoint.pt').exists()


def test_resume_refuses_another_config(tmp_path):
    train(smoke(tmp_path, epochs=1))
    with pytest.raises(ValueError, match='written by another config'):
        train(smoke(tmp_path, epochs=1, seed=3, resume=True))


def test_interrupt_in_process_then_resume_equalization(tmp_path, monkeypatch):
    "A run interrupted mid-epoch 2 and resumed equals an uninterrupted run (EQL draws from the global RNG every step)."
    ref = train(smoke(tmp_path / 'ref', loss='equalization', epochs=3))
    import ltpaper.train.loop as tr
    orig = tr.build_model
    def build_and_arm(*a, **k):
        m = orig(*a, **k)
        calls = dict(n=0)
        def hook(mod, inp):
            if mod.training and (tmp_path / 'run' / 'checkpoint.pt').exists():
                calls['n'] += 1
                if calls['n'] == 3: raise KeyboardInterrupt
        m.register_forward_pre_hook(hook)
        return m
    monkeypatch.setattr(tr, 'build_model', build_and_arm)
    with pytest.raises(KeyboardInterrupt): train(smoke(tmp_path / 'run', loss='equalization', epochs=3))
    monkeypatch.setattr(tr, 'build_model', orig)
    assert load_checkpoint(tmp_path / 'run' / 'checkpoint.pt')['epoch'] == 1
    resumed = train(smoke(tmp_path / 'run', loss='equalization', epochs=3, resume=True))
    assert comparable(resumed) == comparable(ref)


# -------------------------------------------------------------------------------------------------------- subprocesses

def test_sigkill_then_resume_gives_uninterrupted_metrics(tmp_path):
    driver = tmp_path / 'driver.py'; driver.write_text(DRIVER)
    cfg = dict(smoke(tmp_path / 'killed', loss='ours', epochs=3, val_per_class=10).__dict__)
    p = subprocess.Popen([sys.executable, str(driver), json.dumps(cfg), '2'], env=env(), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ref = train(smoke(tmp_path / 'ref', loss='ours', epochs=3, val_per_class=10))    # meanwhile: the uninterrupted run
        deadline = time.time() + 120
        while not (tmp_path / 'killed' / 'HANGING').exists():
            assert p.poll() is None, p.stdout.read().decode()[-3000:]
            assert time.time() < deadline, 'the training subprocess did not reach epoch 2'
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)                               # mid-epoch 2, after the first checkpoint
        assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        if p.poll() is None: p.kill(); p.wait()
    assert not (tmp_path / 'killed' / 'metrics.json').exists()
    assert load_checkpoint(tmp_path / 'killed' / 'checkpoint.pt')['epoch'] == 1
    resumed = train(smoke(tmp_path / 'killed', loss='ours', epochs=3, val_per_class=10, resume=True))
    assert comparable(resumed) == comparable(ref)
    assert json.loads((tmp_path / 'killed' / 'metrics.json').read_text())['history'] == resumed['history']


def test_ddp_two_gloo_processes(tmp_path):
    driver = tmp_path / 'cli.py'
    driver.write_text('import sys\nfrom ltpaper.cli import cli_train\nsys.exit(cli_train(sys.argv[1:]))\n')
    out = tmp_path / 'ddp'
    args = ['--dataset', 'fmnist_lt', '--model', 'small_resnet', '--loss', 'ours', '--epochs', '2', '--batch-size', '64',
            '--lr', '0.05', '--warmup-epochs', '1', '--milestones', '', '--lr-decay', '', '--limit-train', '400', '--limit-test', '200',
            '--device', 'cpu', '--threads', '1', '--out-dir', str(out), '--no-progress']
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(driver), *args],
                       env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert r.stdout.count('last top-1') == 1                      # only rank 0 reports
    m = json.loads((out / 'metrics.json').read_text())
    assert m['status'] == 'complete' and m['last']['epoch'] == 2 and m['num_test'] == 200
    assert abs(sum(m['last']['per_class']) / 10 - m['last']['top1']) < 1e-9   # every test image counted once across ranks
    ck = load_checkpoint(out / 'checkpoint.pt')
    assert ck['world_size'] == 2 and len(ck['rng']) == 2
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint.pt', 'metrics.json']
