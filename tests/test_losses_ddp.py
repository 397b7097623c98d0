"Stateful losses under torch.distributed (2 gloo processes on CPU) equal one process on the concatenated batch."
import os, socket
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest
from ltpaper.losses import build_loss

COUNTS = [300, 120, 40, 12, 5, 2, 1]
CASES = [('ours', {}), ('ours', dict(binning='ura', estimator='ema')), ('ours_study', dict(normalization='raw')),
         ('ours', dict(estimator='bank')), ('ours_study', dict(margin_source='cumulative')), ('seesaw', {}), ('ghm', {}),
         ('ours_prototype', {}), ('ours_ghmc', {}), ('ours_ghmc', dict(g_mode='sigmoid', use_margin=False)), ('ours_global', {})]

def _batches(steps=4, per_rank=(9, 7)):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        out.append([(torch.randn(n, len(COUNTS), generator=g) * 2, torch.randint(0, len(COUNTS), (n,), generator=g),
                     torch.randint(0, sum(COUNTS), (n,), generator=g)) for n in per_rank])
    return out

def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    res = {}
    for ci, (name, hp) in enumerate(CASES):
        loss = build_loss(name, COUNTS, **hp)
        vals, grads, ws = [], [], []
        for step in _batches():
            z, y, idx = step[rank]
            z = z.clone().requires_grad_()
            v = loss(z, y, idx)
            v.backward()
            vals.append(v.item()); grads.append(z.grad.clone())
            ws.append(loss.last_weights.clone() if loss.per_sample_weights else None)
        res[ci] = (vals, grads, ws, {k: t.clone() for k, t in loss.state_dict().items()})
    torch.save(res, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]
_free_port.port = _free_port()

@pytest.fixture(scope='module')
def ddp_results(tmp_path_factory):
    d = tmp_path_factory.mktemp('ddp')
    ctx = mp.get_context('spawn')
    ps = [ctx.Process(target=_worker, args=(r, 2, _free_port.port, str(d))) for r in range(2)]
    for p in ps: p.start()
    for p in ps: p.join(240); assert p.exitcode == 0, f'rank exited with {p.exitcode}'
    return {r: torch.load(d / f'rank{r}.pt', weights_only=False) for r in range(2)}

@pytest.mark.parametrize('ci', range(len(CASES)))
def test_ddp_equals_single_process(ddp_results, ci):
    name, hp = CASES[ci]
    loss = build_loss(name, COUNTS, **hp)
    for s, step in enumerate(_batches()):
        z = torch.cat([b[0] for b in step]).requires_grad_(); y = torch.cat([b[1] for b in step]); idx = torch.cat([b[2] for b in step])
        ce_w = loss(z, y, idx)
        n0 = step[0][0].shape[0]
        if loss.per_sample_weights:   # identical per-sample weights on each rank's slice
            torch.testing.assert_close(ddp_results[0][ci][2][s], loss.last_weights[:n0])
            torch.testing.assert_close(ddp_results[1][ci][2][s], loss.last_weights[n0:])
    for k, t in loss.state_dict().items():      # identical statistics on every rank
        torch.testing.assert_close(ddp_results[0][ci][3][k], t, msg=k)
        torch.testing.assert_close(ddp_results[1][ci][3][k], t, msg=k)
