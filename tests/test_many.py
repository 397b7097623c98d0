"""Several runs in one process (`ltpaper.train.many.train_many`, nbs/train/07_many.ipynb): on the CPU every run's metrics.json and
checkpoint equal those of the same run trained alone by `train`, bit for bit, with different losses (softmax, Seesaw,
`ours` with its running statistics, the equalization loss, which draws random numbers), different numbers of steps and
epochs, a run resumed from a checkpoint, a run that had finished (not trained again), and the compiled step
(`aot_eager`); a run that fails leaves the others to finish."""
import json

import pytest
import torch

from ltpaper.losses import LOSSES
from ltpaper.train.many import _own_compiled, train_many
from ltpaper.train.step import TrainStep
from ltpaper.train import NonFiniteLossError, train

from helpers import FMNIST, ROOT, NaNFromEpoch2, Stop, comparable, smoke, stop_after_first_checkpoint

need_fmnist = pytest.mark.skipif(not (FMNIST / 'train-images-idx3-ubyte.gz').exists() and not (ROOT / 'data' / 'FashionMNIST').exists(),
                                 reason='Fashion-MNIST files not found')


def _cut_after_first_epoch(monkeypatch, cfg):
    "Train `cfg` alone until its first checkpoint is written, then stop as if killed."
    with monkeypatch.context() as mp:
        stop_after_first_checkpoint(mp)
        with pytest.raises(Stop): train(cfg)

def _checkpoint(d):
    return torch.load(d / 'checkpoint.pt', weights_only=True)

def _same_checkpoint(a, b):
    "Model, optimizer and loss state, progress and every RNG state of two checkpoints are equal."
    assert a['epoch'] == b['epoch'] and a['config_hash'] == b['config_hash']
    for k in ('model', 'loss'):
        assert a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]), k
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert all(torch.equal(sa[p]['momentum_buffer'], sb[p]['momentum_buffer']) for p in sa)
    ra, rb = a['rng'][0], b['rng'][0]
    assert torch.equal(ra['torch'], rb['torch']) and torch.equal(ra['numpy']['key'], rb['numpy']['key']) and ra['python'] == rb['python']


@need_fmnist
def test_runs_stepped_together_equal_their_solo_runs(tmp_path, monkeypatch):
    def cfgs(d, resume=False):
        return [smoke(d / 'softmax', epochs=2),
                smoke(d / 'seesaw', loss='seesaw', epochs=3, limit_train=300, batch_size=32, seed=1),   # more steps and epochs
                smoke(d / 'ours', loss='ours', epochs=2, resume=resume),                                 # stateful; resumed
                smoke(d / 'eql', loss='equalization', epochs=1),                                         # random draws,
                smoke(d / 'eql3', loss='equalization', epochs=1, seed=3),                                # two runs of them
                smoke(d / 'done', epochs=1, keep_checkpoint=False, resume=resume)]                       # finished before
    alone = [train(c) for c in cfgs(tmp_path / 'alone')]
    c = cfgs(tmp_path / 'together', resume=True)
    _cut_after_first_epoch(monkeypatch, c[2])          # ours: one epoch done alone, the second in train_many
    train(c[5])                                        # done: finished, its checkpoint not kept
    before = (tmp_path / 'together' / 'done' / 'metrics.json').read_bytes()
    together = train_many(c)
    assert [comparable(m) for m in together] == [comparable(m) for m in alone]
    assert [len(m['history']) for m in together] == [2, 3, 2, 1, 1, 1]
    assert (tmp_path / 'together' / 'done' / 'metrics.json').read_bytes() == before      # not trained again
    for name, m in zip(('softmax', 'seesaw', 'ours', 'eql', 'eql3'), together):
        assert json.loads((tmp_path / 'together' / name / 'metrics.json').read_text()) == json.loads(json.dumps(m))
        _same_checkpoint(_checkpoint(tmp_path / 'together' / name), _checkpoint(tmp_path / 'alone' / name))
    # a run whose checkpoint is its last epoch's: nothing left to train, the same metrics again
    again = train_many([smoke(tmp_path / 'alone' / 'softmax', epochs=2, resume=True)])
    assert comparable(again[0]) == comparable(alone[0])


@need_fmnist
def test_compiled_steps_go_through_train_many(tmp_path):
    "step='aot_eager' (the compiled graph on eager kernels): the runs share one code object and still equal their solo runs."
    cfgs = lambda d: [smoke(d / 'softmax', step='aot_eager', epochs=1), smoke(d / 'ours', loss='ours', step='aot_eager', epochs=1, seed=2)]
    together = train_many(cfgs(tmp_path / 'together'))
    alone = [train(c) for c in cfgs(tmp_path / 'alone')]
    assert [comparable(m) for m in together] == [comparable(m) for m in alone]
    assert {m['provenance']['step'] for m in together} == {'aot_eager (aot_eager, fullgraph)'}


class _CE(torch.nn.Module):
    def forward(self, logits, y, index=None): return torch.nn.functional.cross_entropy(logits, y)

def test_each_run_can_compile_its_own_graph():
    "`_own_compiled` (what a run gets on CUDA with CUDA graphs): two steps of the same kind compile two graphs, not one."
    def step():
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        return TrainStep(m, _CE(), torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), batch_size=8, mode='aot_eager')
    x, y, i = torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.arange(8)
    a, b = step(), step()
    stats = torch._dynamo.utils.counters['stats']
    n = stats['unique_graphs']
    a.compiled, b.compiled = _own_compiled(a), _own_compiled(b)
    assert torch.equal(a(x, y, i), b(x, y, i)) and stats['unique_graphs'] == n + 2
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params))


@need_fmnist
def test_a_failing_run_leaves_the_others_to_finish(tmp_path):
    LOSSES['nan_from_2'] = NaNFromEpoch2
    try:
        with pytest.raises(NonFiniteLossError, match=r'non-finite training loss at epoch 2/2, step 1/'):
            train_many([smoke(tmp_path / 'nan', loss='nan_from_2'), smoke(tmp_path / 'ok', epochs=3, limit_train=200)])
    finally:
        del LOSSES['nan_from_2']
    assert _checkpoint(tmp_path / 'nan')['epoch'] == 1 and not (tmp_path / 'nan' / 'metrics.json').exists()
    assert json.loads((tmp_path / 'ok' / 'metrics.json').read_text())['last']['epoch'] == 3


def test_train_many_refuses_runs_one_process_cannot_hold(tmp_path):
    assert train_many([]) == []
    with pytest.raises(ValueError, match='differ in deterministic'):
        train_many([smoke(tmp_path / 'a'), smoke(tmp_path / 'b', deterministic=True)])
    with pytest.raises(ValueError, match='two runs would write into'):
        train_many([smoke(tmp_path / 'a'), smoke(tmp_path / 'a', loss='seesaw')])


def test_each_runs_epoch_lines_carry_its_name(tmp_path, capsys):
    "Several runs print into one log: every epoch line starts with its run's folder (row/seed), one line per epoch and run."
    train_many([smoke(tmp_path / 'rowA' / 'seed0', epochs=2, limit_train=200, progress=True),
                smoke(tmp_path / 'rowB' / 'seed1', loss='seesaw', epochs=1, limit_train=200, progress=True)])
    lines = [l for l in capsys.readouterr().err.splitlines() if ' epoch ' in l]
    assert sorted(l.split('  ')[0] + ' ' + l.split('  ')[1].split()[1] for l in lines) == ['rowA/seed0 1/2', 'rowA/seed0 2/2', 'rowB/seed1 1/1']
