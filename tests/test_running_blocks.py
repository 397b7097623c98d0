"""The window and bank estimators keep running block masses; reading AURA's statistics from them equals recomputing them.

Reference: the recomputation from the histogram rows (`block_stats`, `density_weights` without an estimator) and the
estimators' update as it was before the running masses (copied below), compared with torch.equal (bit for bit) over
many random stateful steps, several depths, thresholds and estimators, a state_dict round trip, and a checkpoint
made without the `blocks` buffer.
"""
import pytest
import torch
import torch.nn as nn
from ltpaper.losses.binning import (WindowHistogram, BankHistogram, EMAHistogram, block_stats, density_weights, dyadic_blocks,
                             running_block_stats, class_bincount, rank_within_class, fine_cell)
from ltpaper.losses import build_loss


class LegacyWindow(nn.Module):
    "WindowHistogram.update as it was before the running block masses (hist only, one index_add_ per change)."
    def __init__(self, class_counts, n_cells):
        super().__init__()
        cap = torch.as_tensor(class_counts).long().clamp(min=1)
        self.cap, self.offset, self.ptr = cap, cap.cumsum(0) - cap, torch.zeros_like(cap)
        self.cells = torch.full((int(cap.sum()) + 1,), -1, dtype=torch.long)
        self.slot_class = torch.full_like(self.cells, -1)
        self.hist = torch.zeros(len(cap), n_cells)
        self.overflow = torch.full((0,), -1, dtype=torch.long)

    def _write(self, target, cell, pos, keep):
        n = self.hist.shape[1]
        old, old_cls = self.cells[pos], self.slot_class[pos]
        flat = self.hist.view(-1)
        flat.index_add_(0, old_cls.clamp(min=0) * n + old.clamp(min=0), -((old >= 0) & keep).to(flat.dtype))
        flat.index_add_(0, target * n + cell, keep.to(flat.dtype))
        self.cells[pos] = torch.where(keep, cell, torch.full_like(cell, -1))
        self.slot_class[pos] = torch.where(keep, target, torch.full_like(target, -1))

    def update(self, target, cell, index=None):
        flat = self.hist.view(-1)
        if self.overflow.numel():
            flat.index_add_(0, self.overflow.clamp(min=0), -(self.overflow >= 0).to(flat.dtype))
        k = class_bincount(target, len(self.cap))
        rank = rank_within_class(target, k)
        shift = (k - self.cap).clamp(min=0)
        keep = rank >= shift[target]
        pos = self.offset[target] + (self.ptr[target] + rank - shift[target]) % self.cap[target]
        pos = torch.where(keep, pos, torch.full_like(pos, len(self.cells) - 1))
        self._write(target, cell, pos, keep)
        ids = torch.where(keep, torch.full_like(cell, -1), target * self.hist.shape[1] + cell)
        flat.index_add_(0, ids.clamp(min=0), (ids >= 0).to(flat.dtype))
        self.overflow = ids
        self.ptr.copy_((self.ptr + k - shift) % self.cap)


class LegacyBank(LegacyWindow):
    "BankHistogram.update as it was before the running block masses."
    def __init__(self, class_counts, n_cells):
        super().__init__(class_counts, n_cells)
        self.cells = torch.full((int(torch.as_tensor(class_counts).sum()) + 1,), -1, dtype=torch.long)
        self.slot_class = torch.full_like(self.cells, -1)

    def update(self, target, cell, index=None):
        order = torch.argsort(index, stable=True)
        si = index[order]
        last = torch.ones_like(si, dtype=torch.bool)
        last[:-1] = si[1:] != si[:-1]
        keep = torch.empty_like(last)
        keep[order] = last
        pos = torch.where(keep, index, torch.full_like(index, len(self.cells) - 1))
        self._write(target, cell, pos, keep)


COUNTS = [40, 17, 9, 5, 3, 2, 1, 0, 1, 60]

def same(a, b):
    "Bit for bit equal values (a NaN, 0/0 of a class the bank emptied, equals a NaN)."
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _stream(steps, n_cells, seed, batch=(1, 2, 7, 24, 48)):
    "Random batches, long-tailed classes and now and then many samples of a 1-slot class (overflow); cells near 0 or spread."
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor(COUNTS, dtype=torch.float).clamp(min=0.5)
    for s in range(steps):
        B = batch[s % len(batch)]
        t = torch.multinomial(p, B, replacement=True, generator=g)
        if s % 5 == 3: t[: B // 2] = 6                            # class 6 (1 slot) many times: overflow
        easy = torch.rand(B, generator=g) < (0.9 if s % 2 else 0.3)
        u = torch.where(easy, torch.rand(B, generator=g) * 0.02, torch.rand(B, generator=g))
        idx = torch.randint(0, sum(COUNTS), (B,), generator=g)
        yield t, fine_cell(u, n_cells), idx


@pytest.mark.parametrize('estimator', ['window', 'bank'])
@pytest.mark.parametrize('bins,depth', [(10, 7), (10, 0), (3, 4), (5, 2)])
def test_running_blocks_equal_recomputation(estimator, bins, depth):
    n = bins * 2 ** depth
    new = dict(window=WindowHistogram, bank=BankHistogram)[estimator](COUNTS, n)
    old = dict(window=LegacyWindow, bank=LegacyBank)[estimator](COUNTS, n)
    taus = [float('inf')] if depth == 0 else [1 / bins, 0.05, 0.3, 0.01, 2.0]
    for t, c, idx in _stream(80, n, seed=bins * 100 + depth):
        new.update(t, c, idx)
        old.update(t, c, idx)
        assert torch.equal(new.hist, old.hist)                      # the update is unchanged
        assert torch.equal(new.blocks, dyadic_blocks(new.hist))     # the running masses are the recomputed ones
        uy, ri = torch.unique(t, return_inverse=True)
        for tau in taus:
            for rc, r in ((uy, ri), (t, None)):                     # one row per class (CPU) or per sample (accelerators)
                ref = block_stats(new.hist[rc], c, bins, depth, tau, r)
                got = running_block_stats(new.blocks, new.hist, rc, c, bins, depth, tau, r)
                for a, b in zip(ref + (new.hist[rc].sum(1)[r if r is not None else slice(None)],), got):
                    assert same(a, b)
        for norm in ('decoupled', 'raw'):
            for tau in (None, 0.05):
                ref = density_weights(new.hist[uy], c, bins, depth, tau, norm, row_index=ri)
                got = density_weights(new.hist[uy], c, bins, depth, tau, norm, row_index=ri, estimator=new, row_class=uy)
                assert same(ref, got)


def test_ema_keeps_the_recomputation():
    em = EMAHistogram(COUNTS, 40)
    assert getattr(em, 'blocks', None) is None                      # non-integer counts: recomputed from the rows
    t, c = torch.tensor([0, 0, 9]), torch.tensor([1, 2, 39])
    em.update(t, c)
    test = density_weights(em.hist[t], c, 5, 3, estimator=em, row_class=t)
    assert same(test, density_weights(em.hist[t], c, 5, 3))


def _loss_steps(loss, steps, seed, n_cells, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s, (t, _, idx) in zip(range(steps), _stream(steps, n_cells, seed)):
        z = (torch.randn(len(t), len(COUNTS), generator=g, dtype=dtype) * 3).requires_grad_()
        v = loss(z, t, idx)
        v.backward()
        out.append((v.detach(), z.grad, loss.last_weights))
    return out


@pytest.mark.parametrize('name,hp', [('ours', {}), ('ours', dict(estimator='bank')), ('ours', dict(binning='ura')),
                                     ('ours', dict(aura_depth=3, aura_tau=0.05)), ('ours_tuned', {}),
                                     ('ours_study', dict(estimator='bank', normalization='raw'))])
def test_loss_weights_equal_recomputation(name, hp):
    "The loss's weights equal density_weights recomputed from the rows after each update (float32 and float64)."
    for dtype in (torch.float32, torch.float64):
        loss = build_loss(name, COUNTS, **hp).to(dtype)
        hist = loss.estimator.hist
        g = torch.Generator().manual_seed(3)
        for t, _, idx in _stream(40, loss.n_cells, seed=7):
            z = (torch.randn(len(t), len(COUNTS), generator=g, dtype=dtype) * 3).requires_grad_()
            loss(z, t, idx).backward()
            cell = fine_cell(loss.bin_coordinate(loss.last_g), loss.n_cells)
            uy, ri = torch.unique(t, return_inverse=True)
            ref = density_weights(hist[uy], cell, loss.bins, loss.depth, loss.tau, loss.normalization, loss.bin_widths(), ri)
            assert same(loss.last_weights, loss.transform_weights(ref).to(loss.last_weights.dtype))
            assert torch.equal(loss.estimator.blocks, dyadic_blocks(hist))


@pytest.mark.parametrize('estimator', ['window', 'bank'])
def test_state_dict_round_trip_and_old_checkpoints(estimator):
    a = build_loss('ours', COUNTS, estimator=estimator)
    first = _loss_steps(a, 12, seed=1, n_cells=a.n_cells)
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    assert 'estimator.blocks' in sd
    b = build_loss('ours', COUNTS, estimator=estimator)
    b.load_state_dict(sd)                                           # a resumed run
    legacy = {k: v for k, v in sd.items() if k != 'estimator.blocks'}
    c = build_loss('ours', COUNTS, estimator=estimator)
    c.load_state_dict(legacy)                                       # a checkpoint made before `blocks`: rebuilt from hist
    assert torch.equal(c.estimator.blocks, a.estimator.blocks)
    ra, rb, rc = (_loss_steps(x, 12, seed=2, n_cells=a.n_cells) for x in (a, b, c))
    for xa, xb, xc in zip(ra, rb, rc):
        for u, v, w in zip(xa, xb, xc):
            assert same(u, v) and same(u, w)
    assert first                                                    # (the first steps ran)
