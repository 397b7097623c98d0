"""Every stateful loss compiles into whole graphs, `torch.compile(loss, fullgraph=True)`, on the CPU, and the compiled
loss equals the eager one over several stateful steps: the value, the gradient, `last_weights` and every buffer.

- aot_eager (the graphs that inductor would compile, run with eager kernels): float32, bit for bit. Static shapes:
  nothing is compiled after the second step (the window's `overflow` buffer takes the batch's shape at the first step,
  which compiles a second graph), and from the second step on every buffer is updated in place (same storage), as a
  captured CUDA graph needs.
- inductor (C++ kernels compiled here; slow): float64, value and gradient within 1e-10 relative, buffers equal.

What stays outside the graphs: the checks that need the data on the host (targets in range, finite logits) run in
eager mode on the CPU only (`torch.compiler.is_compiling()` skips them); compiled, a non-finite batch shows as a
non-finite loss, at which the training loop stops.
"""
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from ltpaper.losses import LOSSES, build_loss

COUNTS = [40, 17, 9, 5, 3, 2, 1, 0, 1, 60]
CASES = [('ghm', {}), ('seesaw', {}), ('ours', {}), ('ours', dict(binning='ura')), ('ours', dict(estimator='bank')),
         ('ours', dict(estimator='ema')), ('ours', dict(estimator='ema_global')), ('ours_tuned', {}),
         ('ours_study', dict(margin_source='cumulative')), ('ours_study', dict(margin_source='density_sample')),
         ('ours_study', dict(margin_source='density_hist', estimator='bank')), ('ours_study', dict(binning='power')),
         ('ours_prototype', {}), ('ours_prototype', dict(edge_power=2.0)), ('ours_ghmc', {}), ('ours_ghmc', dict(use_margin=False)),
         ('ours_ghmc', dict(g_mode='sigmoid')), ('ours_global', {}), ('ours_global', dict(binning='ura', estimator='ema'))]


def test_cases_cover_every_stateful_loss():
    assert {n for n, _ in CASES} == {n for n, cls in LOSSES.items() if cls.stateful}


def _batches(steps, dtype, B=24, seed=0):
    "Long-tailed batches; at step 2 half the batch is class 6 (one slot): the window overflows."
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor(COUNTS, dtype=torch.float).clamp(min=0.5)
    for s in range(steps):
        y = torch.multinomial(p, B, replacement=True, generator=g)
        if s == 2: y[: B // 2] = 6
        yield (torch.randn(B, len(COUNTS), generator=g, dtype=dtype) * 3, y,
               torch.randint(0, sum(COUNTS), (B,), generator=g))


def _step(loss, z, y, idx):
    z = z.clone().requires_grad_()
    v = loss(z, y, idx)
    v.backward()
    w = getattr(loss, 'last_weights', None)
    return v.detach(), z.grad, None if w is None else w.clone()


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


def _run(name, hp, backend, dtype, steps=5):
    "(eager outputs, compiled outputs, eager buffers, compiled buffers, graphs compiled after step 2, buffers replaced after step 1)."
    torch._dynamo.reset()
    eager, comp = build_loss(name, COUNTS, **hp).to(dtype), build_loss(name, COUNTS, **hp).to(dtype)
    counter = CompileCounterWithBackend(backend)
    fn = torch.compile(comp, fullgraph=True, backend=counter)
    outs_e, outs_c, replaced, ptrs, warm = [], [], set(), None, None
    for s, (z, y, idx) in enumerate(_batches(steps, dtype)):
        outs_e.append(_step(eager, z, y, idx))
        outs_c.append(_step(fn, z, y, idx))
        now = {k: v.data_ptr() for k, v in comp.named_buffers()}
        if ptrs is not None: replaced |= {k for k in now if now[k] != ptrs[k]}
        if s >= 1: ptrs = now
        if s == 1: warm = counter.frame_count
    return outs_e, outs_c, _buffers(eager), _buffers(comp), counter.frame_count - warm, replaced


@pytest.mark.parametrize('name,hp', CASES, ids=lambda x: x if isinstance(x, str) else ','.join(f'{k}={v}' for k, v in x.items()))
def test_compiled_equals_eager_aot_eager(name, hp):
    outs_e, outs_c, bufs_e, bufs_c, graphs, replaced = _run(name, hp, 'aot_eager', torch.float32)
    for s, (a, b) in enumerate(zip(outs_e, outs_c)):
        for what, x, y in zip(('value', 'gradient', 'last_weights'), a, b):
            if x is None: assert y is None, (s, what)
            else: torch.testing.assert_close(y, x, rtol=0, atol=0, equal_nan=True, msg=f'step {s}: {what}')
    assert bufs_e.keys() == bufs_c.keys()
    for k in bufs_e: torch.testing.assert_close(bufs_c[k], bufs_e[k], rtol=0, atol=0, msg=k)
    assert graphs == 0, graphs                      # static shapes: no recompilation after the first two steps
    assert not replaced, replaced                   # from the second step on, the state is updated in place


@pytest.mark.slow
@pytest.mark.parametrize('name,hp', [('ghm', {}), ('seesaw', {}), ('ours', {}), ('ours_tuned', {}), ('ours_prototype', {}), ('ours_ghmc', {})],
                         ids=lambda x: x if isinstance(x, str) else '')
def test_compiled_equals_eager_inductor(name, hp):
    outs_e, outs_c, bufs_e, bufs_c, graphs, replaced = _run(name, hp, 'inductor', torch.float64, steps=4)
    for s, (a, b) in enumerate(zip(outs_e, outs_c)):
        for what, x, y in zip(('value', 'gradient', 'last_weights'), a, b):
            if x is not None: torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-12, msg=f'step {s}: {what}')
    for k in bufs_e: torch.testing.assert_close(bufs_c[k], bufs_e[k], rtol=0, atol=0, msg=k)
    assert graphs == 0 and not replaced, (graphs, replaced)
