"""The other readings (nbs/losses/06_readings.ipynb) against deliberately simple loop references, step by step over several
stateful steps: `ours_prototype` (the authors' GHMSeesawV2: global decay of per-(bin, class) counts, S = sum F^beta,
margins from S), `ours_ghmc` (mmdetection's GHMC per class: T_c / (F_{c,u} n_c), the moving average of the occupied
cells only), `ours_global` (the paper's weights from one window over all classes). Each reference loops over samples,
classes and bins in plain Python floats, independent of the vectorised code."""
import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F

from ltpaper.losses import build_loss

COUNTS = [60, 25, 9, 4, 2, 0]          # class 5 has no training samples and never appears below
C = len(COUNTS)


def _batches(steps=6, B=12, seed=0, dtype=torch.float64):
    "Long-tailed batches: class 4 appears in some batches only (0 or 1 sample), class 5 never; a few extreme logits."
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        y = torch.multinomial(torch.tensor([8., 4, 2, 1, 0, 0]), B, replacement=True, generator=g)
        if s % 2 == 1: y[0] = 4                                     # class 4: one sample in odd steps, none in even ones
        if s == 3: y[1:3] = 3                                       # class 3: at least two samples here
        z = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
        if s == 2: z[1, y[1]] = 40.0                                # sigmoid(z_y) = 1: g = 0 for the prototype
        if s == 4: z[2, y[2]] = -200.0                              # g = 1 exactly
        out.append((z.to(dtype), y))
    return out


def _ce(row, t):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row)) - row[t]


def _margins(counts, gamma):
    n = [max(c, 1) for c in counts]
    return lambda i, y: [gamma * min(0.0, math.log(n[k]) - math.log(n[y])) for k in range(len(n))]


# ------------------------------------------------------------------------------------------------- ours_prototype
def prototype_reference(batches, bins=10, momentum=0.7, beta=1.2, gamma=0.8, edge_power=1.0):
    "Per step: (loss, F[bin][class], S[class]), every count decayed, then the batch's samples added one by one."
    edges = [(j / bins) ** edge_power for j in range(bins + 1)]
    Fc = [[0.0] * C for _ in range(bins)]
    out = []
    for z, y in batches:
        z, y = z.double().tolist(), y.tolist()
        for u in range(bins):
            for c in range(C): Fc[u][c] *= momentum
        for zi, yi in zip(z, y):
            g = abs(1.0 / (1.0 + math.exp(-zi[yi])) - 1.0)
            for u in range(bins):
                if edges[u] < g <= edges[u + 1]: Fc[u][yi] += 1 - momentum
        S = [sum(Fc[u][c] ** beta for u in range(bins)) for c in range(C)]
        S = [1e-6 if s == 0 else s for s in S]
        losses = [_ce([zi[k] + gamma * math.log(min(1.0, S[k] / S[yi])) for k in range(C)], yi) for zi, yi in zip(z, y)]
        out.append((sum(losses) / len(losses), [row[:] for row in Fc], S))
    return out


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('hp', [{}, dict(edge_power=2.0, beta=1.0), dict(bins=30, momentum=0.5, gamma=1.0)],
                         ids=['default', 'feb2021', 'other'])
def test_prototype_equals_loop_reference(hp, dtype):
    batches = _batches(dtype=dtype)
    loss = build_loss('ours_prototype', COUNTS, **hp)
    for step, ((z, y), (ref, Fc, S)) in enumerate(zip(batches, prototype_reference(batches, **hp))):
        v = loss(z, y)
        torch.testing.assert_close(loss.acc_sum.double(), torch.tensor(Fc, dtype=torch.float64), rtol=1e-5, atol=1e-7,
                                   msg=f'step {step}: counts')
        torch.testing.assert_close(loss.last_sizes.double(), torch.tensor(S, dtype=torch.float64), rtol=1e-5, atol=1e-12,
                                   msg=f'step {step}: sizes')
        torch.testing.assert_close(v.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-6, msg=f'step {step}: loss')
    assert loss.last_sizes[5] == pytest.approx(1e-6)                 # never seen: S = 1e-6
    assert loss.acc_sum[:, 4].sum() > 0                               # class 4 seen, then decaying between its visits


def test_prototype_g_zero_is_not_counted_and_absent_classes_decay():
    loss = build_loss('ours_prototype', COUNTS)
    z, y = torch.zeros(3, C), torch.tensor([0, 0, 1])
    z[0, 0] = 40.0                                                    # g = 0 in float32
    loss(z, y)
    torch.testing.assert_close(loss.acc_sum.sum(0), torch.tensor([0.3, 0.3, 0, 0, 0, 0]))
    before = loss.acc_sum.clone()
    loss(torch.zeros(1, C), torch.tensor([2]))
    torch.testing.assert_close(loss.acc_sum[:, :2], 0.7 * before[:, :2])   # global decay, every class every step


# ------------------------------------------------------------------------------------------------------ ours_ghmc
def ghmc_reference(batches, counts, bins=30, momentum=0.75, gamma=0.8, use_margin=True, g_mode='adjusted'):
    "mmdetection's GHMC loop, once per class: per step (loss, weights, acc[class][bin])."
    edges = [j / bins for j in range(bins + 1)]
    edges[-1] += 1e-6
    acc = [[0.0] * bins for _ in range(C)]
    margins = _margins(counts, gamma if use_margin else 0.0)
    out = []
    for z, y in batches:
        z, y = z.double().tolist(), y.tolist()
        zp = [[v + m for v, m in zip(zi, margins(i, yi))] for i, (zi, yi) in enumerate(zip(z, y))]
        if g_mode == 'sigmoid': g = [1.0 - 1.0 / (1.0 + math.exp(-row[yi])) for row, yi in zip(zp, y)]
        else: g = [1.0 - math.exp(-_ce(row if g_mode == 'adjusted' else zi, yi)) for row, zi, yi in zip(zp, z, y)]
        g = [min(max(v, 0.0), 1 - 1e-6) for v in g]
        w = [0.0] * len(y)
        for c in range(C):
            idx = [i for i in range(len(y)) if y[i] == c]
            tot, n = len(idx), 0
            for u in range(bins):
                inds = [i for i in idx if edges[u] <= g[i] < edges[u + 1]]
                if inds:
                    acc[c][u] = momentum * acc[c][u] + (1 - momentum) * len(inds)
                    for i in inds: w[i] = tot / acc[c][u]
                    n += 1
            for i in idx: w[i] /= n
        loss = sum(wi * _ce(row, yi) for wi, row, yi in zip(w, zp, y)) / len(y)
        out.append((loss, w, [row[:] for row in acc]))
    return out


@pytest.mark.parametrize('hp', [{}, dict(use_margin=False), dict(momentum=0.0, bins=10), dict(g_mode='sigmoid'),
                                dict(g_mode='raw', momentum=0.5)], ids=['R+A', 'A+U', 'no-ema', 'sigmoid', 'raw'])
def test_ghmc_equals_mmdetection_loop_per_class(hp):
    batches = _batches()
    loss = build_loss('ours_ghmc', COUNTS, **hp)
    seen_one = seen_none = False
    for step, ((z, y), (ref, w, acc)) in enumerate(zip(batches, ghmc_reference(batches, COUNTS, **hp))):
        v = loss(z, y)
        k = torch.bincount(y, minlength=C)
        seen_one |= bool((k == 1).any())
        seen_none |= bool((k[:5] == 0).any())
        torch.testing.assert_close(loss.last_weights, torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=1e-6,
                                   msg=f'step {step}: weights')
        torch.testing.assert_close(loss.acc_sum.double(), torch.tensor(acc, dtype=torch.float64), rtol=1e-6, atol=1e-7,
                                   msg=f'step {step}: moving averages')
        torch.testing.assert_close(v, torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-6, msg=f'step {step}: loss')
    assert seen_one and seen_none                                     # classes with 1 and with 0 samples in a batch


def test_ghmc_first_step_has_no_bias_correction():
    "As in mmdetection: a fresh cell holds (1 - momentum) R, so a class alone in one bin weighs 1 / (1 - momentum)."
    loss = build_loss('ours_ghmc', COUNTS)
    loss(torch.zeros(4, C), torch.tensor([0, 0, 0, 0]))
    torch.testing.assert_close(loss.last_weights, torch.full((4,), 4.0))


# ---------------------------------------------------------------------------------------------------- ours_global
def aura_blocks(row, bins, depth, tau):
    "(mass, width) of every fine cell's final block and Z, by recursive splitting of dense blocks."
    tot, n = sum(row), len(row)
    out, Z = [None] * n, 0.0
    def rec(lo, hi, level):
        nonlocal Z
        m = sum(row[lo:hi])
        if m > tau * tot and level < depth:
            rec(lo, (lo + hi) // 2, level + 1)
            rec((lo + hi) // 2, hi, level + 1)
        else:
            for i in range(lo, hi): out[i] = (m, (hi - lo) / n)
            if m > 0: Z += (hi - lo) / n
    for b in range(bins): rec(b * n // bins, (b + 1) * n // bins, 0)
    return out, Z


def global_reference(batches, counts, bins=10, depth=7, gamma=0.8):
    "One window of the last sum(counts) samples of any class; per step (loss, weights)."
    nf, window = bins * 2 ** depth, deque(maxlen=sum(counts))
    margins = _margins(counts, gamma)
    out = []
    for z, y in batches:
        z, y = z.double().tolist(), y.tolist()
        zp = [[v + m for v, m in zip(zi, margins(i, yi))] for i, (zi, yi) in enumerate(zip(z, y))]
        cells = [min(int(min(1.0 - math.exp(-_ce(row, yi)), 1 - 1e-6) * nf), nf - 1) for row, yi in zip(zp, y)]
        window.extend(cells)
        row = [0.0] * nf
        for c in window: row[c] += 1
        blocks, Z = aura_blocks(row, bins, depth, 1 / bins)
        w = [blocks[c][1] * sum(row) / (blocks[c][0] * Z) for c in cells]
        out.append((sum(wi * _ce(r, yi) for wi, r, yi in zip(w, zp, y)) / len(y), w))
    return out


def test_global_equals_one_window_over_all_classes():
    batches = _batches(steps=10)                                       # 10 x 12 samples: the window of 100 wraps
    loss = build_loss('ours_global', COUNTS)
    for step, ((z, y), (ref, w)) in enumerate(zip(batches, global_reference(batches, COUNTS))):
        v = loss(z, y)
        torch.testing.assert_close(loss.last_weights, torch.tensor(w, dtype=torch.float64), rtol=1e-4, atol=1e-6,
                                   msg=f'step {step}: weights')
        torch.testing.assert_close(v, torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-6, msg=f'step {step}: loss')
    assert loss.estimator.hist.sum() == sum(COUNTS)


def test_category_wise_is_not_global():
    "The control differs from the paper's reading only by the histogram: per class in `ours`, one in `ours_global`."
    z, y = _batches(steps=1)[0]
    a, b = build_loss('ours', COUNTS), build_loss('ours_global', COUNTS)
    a(z, y)
    b(z, y)
    torch.testing.assert_close(a.last_g, b.last_g)
    for c in y.unique():
        torch.testing.assert_close(a.last_weights[y == c].mean(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)
    assert not torch.allclose(a.last_weights, b.last_weights)


# ------------------------------------------------------------------------------------------------------- all three
@pytest.mark.parametrize('name', ['ours_prototype', 'ours_ghmc', 'ours_global'])
def test_statistics_only_in_training(name):
    loss = build_loss(name, COUNTS)
    (z, y), (z2, y2) = _batches(steps=2)
    loss(z, y)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    v_eval = loss.eval()(z2, y2)
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())
    torch.testing.assert_close(loss.train()(z2, y2), v_eval)
    assert not all(torch.equal(before[k], v) for k, v in loss.state_dict().items())
    fresh = build_loss(name, COUNTS)
    fresh.load_state_dict(loss.state_dict())
    torch.testing.assert_close(fresh(z, y), loss(z, y))
