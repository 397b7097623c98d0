"Every committed metrics.json is complete and consistent: per-class accuracies average to the overall top-1 (balanced test set)."
import json
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted((ROOT / 'results' / 'runs').glob('*/*/seed*/metrics.json'))

def test_there_are_committed_runs():
    assert len(RUNS) >= 100

@pytest.mark.parametrize('path', RUNS, ids=lambda p: str(p.relative_to(ROOT / 'results' / 'runs').parent))
def test_per_class_average_is_overall(path):
    m = json.loads(path.read_text())
    assert m['status'] == 'complete' and m['config']['dataset'] == 'fmnist_lt'
    for rec in (m['last'], m['best']):
        pc = rec['per_class']
        assert len(pc) == len(m['class_counts']) == 10
        assert abs(sum(pc) / len(pc) - rec['top1']) < 1e-6, (path, rec['top1'], sum(pc) / len(pc))
    assert m['val']['last_top1'] is not None and m['num_test'] == 10000
