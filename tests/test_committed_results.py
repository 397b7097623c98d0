"Every committed metrics.json is complete and consistent: per-class accuracies average to the overall top-1 (balanced test set)."
import json
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = sorted([*(ROOT / 'results' / 'runs').glob('*/*/seed*/metrics.json'),        # the default (cpu) profile
               *(ROOT / 'results').glob('[!s]*/runs/*/*/seed*/metrics.json')])      # other profiles (results/<profile>/), not smoke

def test_there_are_committed_runs():
    assert len(RUNS) >= 100

@pytest.mark.parametrize('path', RUNS, ids=lambda p: str(p.relative_to(ROOT / 'results').parent))
def test_per_class_average_is_overall(path):
    m = json.loads(path.read_text())
    assert m['status'] == 'complete' and m['config']['dataset'] == 'fmnist_lt'
    for rec in (m['last'], m['best']):
        pc = rec['per_class']
        assert len(pc) == len(m['class_counts']) == 10
        assert abs(sum(pc) / len(pc) - rec['top1']) < 1e-6, (path, rec['top1'], sum(pc) / len(pc))
    assert m['val']['last_top1'] is not None and m['num_test'] == 10000


@pytest.mark.parametrize('path', RUNS, ids=lambda p: str(p.relative_to(ROOT / 'results').parent))
def test_recorded_hash_is_the_config_hash(path):
    "Each record's id is the hash of the config it records, every loss hyperparameter spelled out."
    from ltpaper.losses import loss_hparams
    from ltpaper.config import config_hash
    m = json.loads(path.read_text())
    assert config_hash(m['config']) == m['config_hash'], path
    assert set(loss_hparams(m['config']['loss'])) <= set(m['config']['loss_params']), path


def test_paper_profile_runs_record_their_gpu():
    paper = [p for p in RUNS if 'paper' in p.parts]
    assert paper, 'the paper-profile runs made on a GPU are committed under results/paper/runs'
    for p in paper:
        m = json.loads(p.read_text())
        assert m['config']['model'] == 'resnet32' and m['config']['epochs'] == 200 and len(m['history']) == 200
        assert m['provenance']['device'].startswith('NVIDIA'), p
