"The intra-balance study end to end on the smoke profile: a few variants through papermill, then its notebook renders."
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_study_smoke_end_to_end(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'ltpaper.cli', 'reproduce', 'study', '--profile', 'smoke', '--jobs', '2',
                        '--rows', 'raau-*,r-*,temper05-*', '--seeds', '0', '--results-root', str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    # the study's references are its own runs (one long-tailed subset per seed), like its A-variants
    assert (tmp_path / 'smoke' / 'runs' / 'study' / 'r-if100' / 'seed0' / 'metrics.json').is_file()
    assert not (tmp_path / 'smoke' / 'runs' / 'fmnist_lt').exists()
    assert (tmp_path / 'smoke' / 'runs' / 'study' / 'temper05-if100' / 'seed0' / 'metrics.json').is_file()
    md = (tmp_path / 'smoke' / 'tables' / 'study.md').read_text()
    assert 'R+A+AU, w^0.5' in md and 'VALIDATION' in md and 'R (margins only)' in md
    for stem in ('study_weights', 'study_val_vs_test'):
        assert (tmp_path / 'smoke' / 'figures' / f'{stem}.png').stat().st_size > 5000
