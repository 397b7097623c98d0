"Every ltpaper module imports in a fresh interpreter (a hidden notebook cell can mask a missing import)."
import pkgutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name.removeprefix('ltpaper.') for m in pkgutil.walk_packages([str(ROOT / 'ltpaper')], 'ltpaper.')
                 if not m.name.rsplit('.', 1)[-1].startswith('_'))

def test_modules_found():
    assert {'losses', 'losses.binning', 'data.readers', 'train.loop', 'pipeline.runs', 'settings'} <= set(MODULES)

@pytest.mark.parametrize('mod', MODULES)
def test_fresh_import(mod):
    r = subprocess.run([sys.executable, '-c', f'import ltpaper.{mod}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
