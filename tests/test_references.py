"Every reference in the repository points to a file that exists, and nothing cites developer notes the repository lacks."
import re, subprocess
from pathlib import Path

import pytest
from helpers import ROOT

TEXT = ('.md', '.ipynb', '.py', '.yaml', '.yml', '.ini', '.toml', '.sh', '.cfg', 'Makefile')
FORBIDDEN = re.compile(r'METHOD\.md|STYLE\.md|TOOLCHAIN\.md|\.\./shared|METHOD §')
# a path into the repository: a top-level folder, then path characters, ending in a file extension
PATH = re.compile(r'(?<![\w./-])((?:nbs|configs|ltpaper|tools|benchmarks|tests|data|figures|tables|results|docs|\.ci)'
                  r'/[\w./-]*\.(?:ipynb|py|yaml|md|csv|png|pdf|json|sh|txt|tex))')
GENERATED = ('results/executed/', 'results/smoke/', 'results/tmp/', 'results/checkpoints/', '_docs/', 'docs/_build/')

def tracked():
    out = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    return [ROOT/p for p in out if p.endswith(TEXT) and not p.startswith('results/') and p != 'tests/test_references.py']

FILES = tracked()

def test_scans_something():
    assert len(FILES) > 50

@pytest.mark.parametrize('path', FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_missing_reference(path):
    text = path.read_text(errors='replace')
    bad = sorted({m.group(0) for m in FORBIDDEN.finditer(text)})
    assert not bad, f"{path.relative_to(ROOT)} cites {bad}: files the repository does not contain"
    missing = sorted({p for p in PATH.findall(text) if not p.startswith(GENERATED) and not (ROOT/p).exists()
                      and not re.search(r'/[A-Z]+\.\w+$', p)})          # placeholders: nbs/X.ipynb, configs/TABLE.yaml
    assert not missing, f"{path.relative_to(ROOT)} names missing file(s) {missing}"
