"`ltpaper verify`: a planted drift fails it; a sample of committed cpu-profile runs reproduces exactly (the CI check)."
import json, shutil, subprocess, sys
from pathlib import Path

import pytest
from helpers import ROOT, env

def ltpaper(*args, timeout=1200):
    return subprocess.run([sys.executable, '-m', 'ltpaper.cli', *args], capture_output=True, text=True, env=env(),
                          cwd=ROOT, timeout=timeout)

# Committed cpu-profile runs that CI reruns: an IF-10 row and two stateful losses at IF 100 (about 3 minutes on
# 2 cores). A change of the code that alters committed numbers fails here until the affected runs are rerun
# (`ltpaper verify fmnist_lt` names them; docs/reproducing.md, `ltpaper verify`).
CI_SAMPLE = 'softmax-if10,seesaw-if100,ours-if100'

def test_committed_sample_reproduces_exactly():
    runs = ROOT/'results'/'runs'/'fmnist_lt'
    before = {p: p.read_bytes() for p in runs.glob('*/seed0/metrics.json')}
    r = ltpaper('verify', 'fmnist_lt', '--rows', CI_SAMPLE, '--seeds', '0', '--jobs', '2')
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count('equal ') == 3 and '3 equal' in r.stdout, r.stdout
    assert {p: p.read_bytes() for p in runs.glob('*/seed0/metrics.json')} == before     # committed files untouched

def test_planted_drift_fails(tmp_path):
    root = tmp_path/'results'
    r = ltpaper('reproduce', 'fmnist_lt', '--profile', 'smoke', '--rows', 'seesaw-if100', '--seeds', '0',
                '--results-root', str(root))
    assert r.returncode == 0, r.stderr
    args = ('verify', 'fmnist_lt', '--profile', 'smoke', '--rows', 'seesaw-if100', '--seeds', '0', '--results-root', str(root))
    ok = ltpaper(*args)
    assert ok.returncode == 0 and '1 equal' in ok.stdout, ok.stdout + ok.stderr
    m = root/'smoke'/'runs'/'fmnist_lt'/'seesaw-if100'/'seed0'/'metrics.json'
    rec = json.loads(m.read_text())
    rec['last']['per_class'][3] += 0.01                                                  # one committed number drifts
    m.write_text(json.dumps(rec))
    bad = ltpaper(*args)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert 'differs' in bad.stdout and 'last.per_class[3]' in bad.stdout, bad.stdout
    assert json.loads(m.read_text()) == rec                                              # verify never writes results

def test_nothing_committed_is_not_equal(tmp_path):
    r = ltpaper('verify', 'fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100', '--seeds', '0',
                '--results-root', str(tmp_path))
    assert r.returncode == 1 and 'missing' in r.stdout and 'nothing committed' in r.stdout, r.stdout + r.stderr
