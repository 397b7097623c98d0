"The benchmark scripts parse their arguments and run (tiny sizes); the GPU check script is valid bash and refuses bad input."
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / 'benchmarks' / 'gpu_check.sh'
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable)

def sh(*args):
    return subprocess.run(['bash', str(GPU), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)

def test_gpu_check_is_valid_bash():
    assert subprocess.run(['bash', '-n', str(GPU)]).returncode == 0

def test_gpu_check_dry_run_prints_the_plan():
    r = sh('--dry-run', '--skip', 'paper', '--loss', 'seesaw')
    assert r.returncode == 0, r.stderr
    assert 'paper=skip' in r.stdout and 'loss-of-paper-run=seesaw' in r.stdout and 'dry run' in r.stdout

def test_gpu_check_refuses_bad_arguments():
    for args, msg in [(['--bogus'], "unknown argument '--bogus'"), (['--skip', 'everything'], "unknown step 'everything'"),
                      (['--loss', 'nope'], "unknown loss 'nope'")]:
        r = sh(*args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)

def test_gpu_check_without_gpu_says_so():
    import torch
    if torch.cuda.is_available(): return          # on a GPU machine this would start the real check
    r = sh('--skip', 'cells,loss,throughput,paper')
    assert r.returncode == 3 and 'no CUDA device' in r.stderr

def test_loss_speed_runs_and_writes_ratios(tmp_path):
    out = tmp_path / 'ls.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'loss_speed.py'), '--classes', '10', '--repeats', '2', '--out', str(out)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    names = {row['loss'] for row in res['rows']}
    assert {'cross_entropy', 'ours', 'seesaw', 'ghm'} <= names and all(row['ratio'] > 0 for row in res['rows'])
    assert out.with_suffix('.md').read_text().count('|') > 20
