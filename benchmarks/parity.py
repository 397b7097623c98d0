"""Parity of the fast training step: each row of a short profile trained with the eager loop and with the compiled
step, seed by seed; per row the test top-1 as mean ± std over seeds both ways, and whether they agree.

    python benchmarks/parity.py [--table fmnist_lt] [--profile mid] [--rows softmax-if100,seesaw-if100,ours-if100]
                                [--seeds 0,1,2] [--fast compiled|aot_eager] [--epochs N] [--limit-train N]
                                [--device auto] [--jobs 1] [--out DIR]

The runs are planned as `ltpaper reproduce TABLE --profile PROFILE` plans them (the same configs and hashes; with
--epochs or --limit-train a shorter trial of them), then each is trained twice into --out: with step='eager' and
with step=--fast. Both runs of a seed have the same config hash (the step mode is a run-control field); they differ
only by float rounding, which a long training amplifies into a different trajectory, so the comparison is
statistical: per row, the last-epoch test top-1 over seeds (mean ± sample std) of each mode, the mean paired
difference (fast - eager, same seed) and `agree` = |mean difference| <= the larger of the two stds (None with fewer
than 2 seeds). Finished runs in --out are reused (run again with a new --out to retrain). Writes parity.json and
parity.md into --out and prints the table. On a GPU: `--profile paper --epochs 20 --jobs 6` (ResNet-32, CUDA graphs).
"""
import argparse, json, statistics, sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ltpaper.pipeline.runs import parse_seeds

MODES = ('eager', 'fast')


def shorten(cfg: dict, epochs=None, limit_train=None) -> dict:
    "A trial of `cfg`: `epochs` with the milestones scaled into them, `limit_train` training images (another config hash)."
    cfg = dict(cfg)
    if epochs:
        E = cfg['epochs']
        ms = sorted({max(1, min(epochs - 1, round(m * epochs / E))) for m in cfg['milestones']}) if epochs > 1 else []
        ms = ms[:len(cfg['lr_decay'])]
        cfg.update(epochs=epochs, milestones=ms, lr_decay=cfg['lr_decay'][:len(ms)],
                   warmup_epochs=min(cfg['warmup_epochs'], max(epochs - 1, 0)))
    if limit_train: cfg['limit_train'] = limit_train
    return cfg


def plan(a) -> list:
    "(row, seed, mode, config) of every run: rows x seeds x (eager, fast), each into its own folder under --out."
    from ltpaper.pipeline.runs import plan_jobs
    jobs = plan_jobs(a.table, a.profile, rows=a.rows, seeds=parse_seeds(a.seeds), device=a.device)
    out = []
    for j in jobs:
        base = shorten(j.config, a.epochs, a.limit_train)
        for mode, step in zip(MODES, ('eager', a.fast)):
            run_dir = Path(a.out) / 'runs' / j.row / f'seed{j.seed}' / mode
            cfg = dict(base, step=step, out_dir=str(run_dir), resume=True, keep_checkpoint=False, progress=False)
            out.append((j.row, j.seed, mode, cfg))
    return out


def train_one(cfg: dict) -> dict:
    "Train one config (or read its finished metrics.json back); what the report needs of it."
    from ltpaper.config import config_hash
    from ltpaper.train import TrainConfig, train
    m = train(TrainConfig.from_dict(cfg))
    val = (m.get('val') or {}).get('last_top1')
    return dict(config_hash=config_hash(cfg), step=m['provenance'].get('step', cfg['step']), last_top1=m['last']['top1'],
                best_top1=m['best']['top1'], val_last_top1=val, train_loss=m['history'][-1]['train_loss'],
                wall_time_s=round(m['wall_time_s'], 1))


def _mean_std(xs):
    return (statistics.fmean(xs) if xs else None), (statistics.stdev(xs) if len(xs) > 1 else None)


def summarise(runs: list) -> list:
    "Per row: n seeds, eager and fast mean ± std of the last top-1, mean and largest paired difference, agree."
    out = []
    for row in dict.fromkeys(r['row'] for r in runs):
        by = {(r['seed'], r['mode']): r['last_top1'] for r in runs if r['row'] == row}
        seeds = sorted({s for s, _ in by})
        (me, se), (mf, sf) = (_mean_std([by[s, m] for s in seeds]) for m in MODES)
        diffs = [by[s, 'fast'] - by[s, 'eager'] for s in seeds]
        agree = None if len(seeds) < 2 else abs(mf - me) <= max(se, sf)
        out.append(dict(row=row, seeds=len(seeds), eager_mean=me, eager_std=se, fast_mean=mf, fast_std=sf,
                        mean_diff=statistics.fmean(diffs), max_abs_diff=max(abs(d) for d in diffs), agree=agree))
    return out


def _pm(m, s): return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}"

def table(summary: list, a) -> str:
    head = [f"## Parity of the fast step: {a.table} / {a.profile}" + (f" (trial: {a.epochs} epochs)" if a.epochs else '')
            + f", eager vs step={a.fast}, last-epoch test top-1 (%)", '',
            '| row | seeds | eager | fast | mean diff (fast - eager) | max abs diff | agree within seed std |',
            '|---|---|---|---|---|---|---|']
    lines = [f"| {s['row']} | {s['seeds']} | {_pm(s['eager_mean'], s['eager_std'])} | {_pm(s['fast_mean'], s['fast_std'])} | "
             f"{s['mean_diff']:+.2f} | {s['max_abs_diff']:.2f} | {'n/a (1 seed)' if s['agree'] is None else s['agree']} |" for s in summary]
    return '\n'.join(head + lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--table', default='fmnist_lt')
    ap.add_argument('--profile', default='mid')
    ap.add_argument('--rows', default='softmax-if100,seesaw-if100,ours-if100', help='comma-separated rows (globs)')
    ap.add_argument('--seeds', default='0,1,2')
    ap.add_argument('--fast', default='compiled', choices=['compiled', 'aot_eager'], help='the step mode compared with eager')
    ap.add_argument('--epochs', type=int, default=None, help='a shorter trial of the profile (milestones scaled)')
    ap.add_argument('--limit-train', type=int, default=None, help='cap the training images (a trial)')
    ap.add_argument('--device', default=None, help="the runs' device (default: the profile's)")
    ap.add_argument('--jobs', type=int, default=1, help='runs at once, each in its own process (1: in this process)')
    ap.add_argument('--out', default='parity', help='folder for the runs, parity.json and parity.md')
    a = ap.parse_args(argv)
    runs = plan(a)
    cfgs = [cfg for *_, cfg in runs]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=get_context('spawn')) as pool: results = list(pool.map(train_one, cfgs))
    else: results = [train_one(cfg) for cfg in cfgs]
    rows = [dict(row=row, seed=seed, mode=mode, **res) for (row, seed, mode, _), res in zip(runs, results)]
    summary = summarise(rows)
    doc = dict(benchmark='parity', table=a.table, profile=a.profile, trial_epochs=a.epochs, limit_train=a.limit_train, fast=a.fast,
               seeds=parse_seeds(a.seeds), summary=summary, runs=rows)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    (out / 'parity.json').write_text(json.dumps(doc, indent=1))
    md = table(summary, a)
    (out / 'parity.md').write_text(md)
    print(md)
    return doc


if __name__ == '__main__':
    main()
