"""One-off migration (2026-12-01): the committed records under the names and protocol of the fidelity change.

That change made `ours` the paper's reading (g from the margin-adjusted logits, w = 1/GD), moved the intra-balance
study's readings to `ours_study` (every flag, paper defaults) and its choice to `ours_tuned` (g from the raw logits,
w -> w**0.5: the old default of `ours`), and drew the long-tailed subset once from `subset_seed` (default 0) instead
of from each run's seed. This script rewrites what the committed runs computed under those names, without
retraining, and re-hashes each record (keeping the previous hash under `migrated`):

- study runs (`results/runs/study`): loss `ours` -> `ours_study` with the same hyperparameters; the study keeps its
  per-seed subsets (`subset_seed: null` in configs/study.yaml, which is the value the records already imply).
  Its references softmax / R / Seesaw at IF 100 were runs of the fmnist_lt table made with per-seed subsets: they
  are copied to the study's own rows (softmax-if100, r-if100, seesaw-if100) before fmnist_lt reruns them.
- fmnist_lt runs whose loss was the old default `ours` -> `ours_tuned` (row folders `ours-if*` -> `ours_tuned-if*`);
  the A+U and R+A+U rows ran that same tuned reading: -> `ours_tuned` in place (stale for the rows, which now mean
  the paper's reading, until rerun); R (use_intra=False): -> `ours` with the paper's hyperparameters (the study
  flags dropped were inert or at the paper's value: checked).
- seed-0 runs: drawn from subset seed 0 already (the subset came from the run seed), so `subset_seed: 0` is added;
  seeds 1 and 2 keep their per-seed subsets (no key = `subset_seed: null`) and are stale until rerun.

Usage: python tools/migrate_fidelity.py [--dry-run]      (idempotent: a migrated record is left alone)
"""
import json, os, shutil, sys, tempfile
from pathlib import Path

from ltpaper.losses import effective_hparams, loss_hparams
from ltpaper.config import config_hash

ROOT = Path(__file__).resolve().parents[1]/'results'
PAPER_KEYS = set(loss_hparams('ours'))
STUDY_REFS = {'softmax-if100': 'softmax-if100', 'seesaw-if100': 'seesaw-if100', 'ours_r-if100': 'r-if100'}

def write(path, rec, dry):
    if dry: return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix='.metrics.', suffix='.tmp')
    with os.fdopen(fd, 'w') as f: f.write(json.dumps(rec, indent=1))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)

def as_paper(params):
    "The paper-`ours` hyperparameters of an old `ours` config whose study flags are inert or at the paper's value."
    paper = {k: v for k, v in params.items() if k in PAPER_KEYS}
    assert effective_hparams('ours_study', params) == effective_hparams('ours_study', paper), params
    return paper

def migrate(path: Path, table: str, row: str, dry: bool) -> str:
    rec = json.loads(path.read_text())
    if 'migrated' in rec: return 'already'
    c, before = rec['config'], rec['config_hash']
    if c['loss'] == 'ours':
        if table == 'study': c['loss'] = 'ours_study'
        elif not c['loss_params']['use_intra']: c['loss_params'] = as_paper(c['loss_params'])
        else:
            assert effective_hparams('ours_tuned', c['loss_params']) == effective_hparams('ours_tuned', {
                k: c['loss_params'][k] for k in ('use_margin', 'use_intra', 'binning')}), path
            c['loss'] = 'ours_tuned'
    if table != 'study' and c['seed'] == 0: c['subset_seed'] = 0   # seed 0 drew its subset from seed 0
    rec['config_hash'] = config_hash(c)
    rec['migrated'] = dict(by='tools/migrate_fidelity.py', previous_hash=before)
    c['out_dir'] = str(path.parent)
    write(path, rec, dry)
    return f"{before} -> {rec['config_hash']} ({c['loss']}, subset_seed={c.get('subset_seed', 'null')})"

def main(dry=False):
    runs = ROOT/'runs'
    for old, new in STUDY_REFS.items():                                  # the study's references keep their subsets
        src, dst = runs/'fmnist_lt'/old, runs/'study'/new
        if src.exists() and not dst.exists():
            print(f"copy {src.relative_to(ROOT)} -> {dst.relative_to(ROOT)}")
            if not dry: shutil.copytree(src, dst)
    for fm in (runs/'fmnist_lt', ROOT/'paper'/'runs'/'fmnist_lt'):
        for d in sorted(fm.glob('ours-if*')):                             # the old default of `ours` is `ours_tuned`
            new = d.with_name(d.name.replace('ours-', 'ours_tuned-', 1))
            if not new.exists():
                print(f"move {d.relative_to(ROOT)} -> {new.relative_to(ROOT)}")
                if not dry: d.rename(new)
    for path in sorted(ROOT.glob('**/runs/*/*/seed*/metrics.json')):
        table, row = path.parts[-4], path.parts[-3]
        if 'smoke' in path.parts: continue
        print(f"{path.relative_to(ROOT)}: {migrate(path, table, row, dry)}")

if __name__ == '__main__': main('--dry-run' in sys.argv)
