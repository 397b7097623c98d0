"""One-off migration (2026-11-26): spell out, in every committed metrics.json, the loss hyperparameters each run
actually used, and re-hash it.

Until then a run recorded only the loss_params its config named, and run ids hashed those alone, so changing a
code default (ours: temper 1.0 -> 0.5 at commit df0aa33, 2026-11-26 20:44:04 UTC; g_mode 'adjusted' -> 'raw'
at the commit that adds this file) silently changed what an old record meant. Run ids now hash
`ltpaper.losses.effective_hparams` and new records spell out every hyperparameter; this script brings the old
records to that form with the defaults that were in force when each run started (read from git history: no
other loss default changed since the first commit). The per-class weight statistics in each record's history
bear the temper rule out (untempered runs: effective batch fraction 0.12-0.21 unless mixed, max weights in the
hundreds; tempered: 0.34-0.63). Each changed record keeps `config_pinned` with what was filled in and the
previous hash. Idempotent: a record with every hyperparameter spelled out is left alone.

Usage: python tools/pin_loss_params.py [results/runs] [--dry-run]
"""
import json, os, sys, tempfile
from datetime import datetime
from pathlib import Path

from ltpaper.losses import loss_hparams
from ltpaper.reproduce import HASH_EXCLUDE, _norm, config_hash
import hashlib

def old_hash(cfg):
    "The hash before loss_params were hashed by effect: the named loss_params as they stand."
    d = {k: _norm(v) for k, v in sorted(cfg.items()) if k not in HASH_EXCLUDE}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(',', ':'), allow_nan=False).encode()).hexdigest()[:16]

TEMPER_CHANGE = datetime.fromisoformat('2026-11-26T20:44:04+00:00')   # commit df0aa33
THEN = {'ours': lambda started: dict(g_mode='adjusted', temper=1.0 if started < TEMPER_CHANGE else 0.5)}

def pin(path, dry=False):
    rec = json.loads(Path(path).read_text())
    cfg = rec['config']; loss = cfg['loss']; given = cfg.get('loss_params') or {}
    started = datetime.fromisoformat(rec['provenance']['started'])
    then = {**loss_hparams(loss), **THEN.get(loss, lambda s: {})(started)}
    missing = {k: v for k, v in then.items() if k not in given}
    if not missing: return None
    old = rec['config_hash']
    assert old_hash(cfg) == old, f"{path}: recorded hash {old} does not match its config"
    cfg['loss_params'] = {**given, **missing}
    rec['config_hash'] = config_hash(cfg)
    rec['config_pinned'] = dict(by='tools/pin_loss_params.py', filled=missing, previous_config_hash=old)
    if not dry:
        fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix='.metrics.json.', suffix='.tmp')
        with os.fdopen(fd, 'w') as f: json.dump(rec, f)
        os.replace(tmp, path)
    return old, rec['config_hash'], missing

if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    root = Path(args[0] if args else 'results/runs'); dry = '--dry-run' in sys.argv
    n = 0
    for p in sorted(root.glob('**/metrics.json')):
        r = pin(p, dry)
        if r: n += 1; print(f"{p}: {r[0]} -> {r[1]}; filled {', '.join(f'{k}={v}' for k, v in r[2].items() if k in ('temper', 'g_mode')) or 'defaults'}")
    print(f"{'would pin' if dry else 'pinned'} {n} record(s) under {root}")
