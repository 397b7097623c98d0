"The long-tailed subset is drawn once from subset_seed: two seeds of one row train on the same images, yet are different runs."
import pytest
import torch

from helpers import FMNIST, smoke
from ltpaper.config import config_hash
from ltpaper.train.run_data import build_data
from ltpaper.train import train

pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist (make data installs it)")

def images(cfg):
    train_set, test_set, val_set, counts, *_ = build_data(cfg, 0, 1, torch.device('cpu'))
    return train_set.source_index.tolist(), val_set.source_index.tolist() if val_set is not None else None, counts

def test_seeds_share_the_subset_and_still_differ(tmp_path):
    a, b = smoke(tmp_path/'a', seed=0, val_per_class=20), smoke(tmp_path/'b', seed=1, val_per_class=20)
    ia, ib = images(a), images(b)
    assert ia == ib and len(ia[0]) > 100                                 # the same training (and validation) images
    ma, mb = train(a), train(b)
    assert ma['class_counts'] == mb['class_counts']
    assert [h['train_loss'] for h in ma['history']] != [h['train_loss'] for h in mb['history']]   # different runs
    assert config_hash(a) != config_hash(b)

def test_subset_seed_none_is_one_subset_per_seed(tmp_path):
    a = smoke(tmp_path/'a', seed=0, subset_seed=None)
    b = smoke(tmp_path/'b', seed=1, subset_seed=None)
    assert images(a)[0] != images(b)[0]                                  # the old protocol: each seed its own subset
    assert images(smoke(tmp_path/'c', seed=1, subset_seed=0))[0] == images(smoke(tmp_path/'d', seed=0))[0]
    # hashed by effect: subset_seed=None is the value of the runs made before the field existed (no key in their records)
    cfg = {k: v for k, v in vars(a).items()}
    assert config_hash(cfg) == config_hash({k: v for k, v in cfg.items() if k != 'subset_seed'})
    assert config_hash(smoke(tmp_path/'e', seed=0, subset_seed=0)) != config_hash(smoke(tmp_path/'f', seed=0, subset_seed=None))
