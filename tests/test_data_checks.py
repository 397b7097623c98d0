"""Data checks that match what data/README.md promises: `ltpaper fetch` checks every image listed in the split
files / JSONs, a partial copy is named instead of silently skipped, metrics.json records the folder actually read,
and a missing image is the same one-line error with any number of loader workers."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ltpaper.data import readers as R   # where DEBIAN_FMNIST is read: patch it there
from ltpaper.cli import cli_fetch, cli_train
from ltpaper.data import build_dataset, make_loader
from ltpaper.train import train

from helpers import cli, smoke, write_fmnist

torch.set_num_threads(1)


# ---------------------------------------------------------------- small files in the real formats
def write_imagenet_lt(root, n_train=1500, jpegs=False):
    "OLTR split files over ROOT/imagenet/; images are empty files (fetch only stats them) unless `jpegs`."
    lines = {'train': [f'train/n0{k % 4}440764/img_{k}.JPEG {k % 4}' for k in range(n_train)],
             'val': [f'train/n0{c}440764/img_{c}.JPEG {c}' for c in range(4)],
             'test': [f'val/n0{c}440764/val_{c}.JPEG {c}' for c in range(4)]}
    (root/'ImageNet_LT').mkdir(parents=True)
    for s, l in lines.items():
        (root/'ImageNet_LT'/f'ImageNet_LT_{s}.txt').write_text('\n'.join(l) + '\n')
        for line in l:
            p = root/'imagenet'/line.split()[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            if jpegs: Image.fromarray(np.full((20, 20, 3), 40 * int(line.split()[1]), np.uint8)).save(p, 'JPEG')
            else: p.touch()
    return lines

def write_inat(root):
    base = root/'inaturalist2017'
    cats = [{'id': 2, 'name': 'a'}, {'id': 5, 'name': 'b'}]
    for name, start in (('train2017.json', 0), ('val2017.json', 100)):
        images = [{'id': k, 'file_name': f'train_val_images/Aves/{k}.jpg'} for k in range(start, start + 6)]
        anns = [{'id': k, 'image_id': k, 'category_id': 2 if k % 2 else 5} for k in range(start, start + 6)]
        for im in images:
            (base/im['file_name']).parent.mkdir(parents=True, exist_ok=True)
            (base/im['file_name']).touch()
        (base/name).write_text(json.dumps({'images': images, 'annotations': anns, 'categories': cats}))
    return base


# ---------------------------------------------------------------- fetch checks every listed image
def _unsampled(n):
    "An index that the readers' evenly spaced sample of 1,000 files skips."
    sampled = set(np.unique(np.linspace(0, n - 1, min(n, 1000)).astype(int)).tolist())
    return next(i for i in range(n) if i not in sampled)

def test_fetch_imagenet_lt_checks_every_listed_image(tmp_path):
    lines = write_imagenet_lt(tmp_path)
    code, out, err = cli(cli_fetch, ['imagenet_lt', '--root', str(tmp_path), '--no-download'])
    assert code == 0 and 'all 1,508 images listed in the split files exist' in out, (out, err)
    gone = lines['train'][_unsampled(len(lines['train']))].split()[0]
    (tmp_path/'imagenet'/gone).unlink()
    build_dataset('imagenet_lt', tmp_path, split='train')          # building samples 1,000 files: this one slips through
    code, out, err = cli(cli_fetch, ['imagenet_lt', '--root', str(tmp_path), '--no-download'])
    assert (code, out, err.count('\n')) == (2, '', 1), err
    assert '1 of 1,500 images listed for the train split are missing' in err and gone in err

def test_fetch_inaturalist_checks_every_listed_image(tmp_path):
    base = write_inat(tmp_path)
    code, out, _ = cli(cli_fetch, ['inaturalist2017', '--root', str(tmp_path), '--no-download'])
    assert code == 0 and 'all 12 images listed' in out
    (base/'train_val_images'/'Aves'/'103.jpg').unlink()
    code, out, err = cli(cli_fetch, ['inaturalist2017', '--root', str(tmp_path), '--no-download'])
    assert code == 2 and '103.jpg' in err and err.count('\n') == 1


# ---------------------------------------------------------------- which folder is used, and recorded
@pytest.fixture
def other_fmnist():
    "Debian's Fashion-MNIST: the folder a partial copy in the data root used to fall back to, silently."
    if not (R.DEBIAN_FMNIST/'train-images-idx3-ubyte.gz').is_file(): pytest.skip("Debian's dataset-fashion-mnist not installed")
    return R.DEBIAN_FMNIST

def test_partial_fmnist_copy_is_an_error_naming_it(tmp_path, other_fmnist):
    root = tmp_path/'root'
    raw = root/'FashionMNIST'/'raw'
    write_fmnist(raw)
    (raw/'t10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(FileNotFoundError, match=r'FashionMNIST/raw holds a partial copy \(missing t10k-labels-idx1-ubyte\)'):
        build_dataset('fmnist_lt', root)
    code, out, err = cli(cli_train, ['--dataset', 'fmnist_lt', '--data-root', str(root), '--out-dir', str(tmp_path/'run')])
    assert (code, out, err.count('\n')) == (2, '', 1) and 'partial copy' in err and str(raw) in err
    assert build_dataset('fmnist_lt', tmp_path/'empty').data_dir == str(other_fmnist)   # nothing in the root: the other copy

def test_metrics_record_the_folder_actually_read(tmp_path, other_fmnist):
    root = tmp_path/'root'
    write_fmnist(root/'FashionMNIST'/'raw', per_class=20, test_per_class=4)
    kw = dict(imbalance_factor=4, epochs=1, warmup_epochs=0, milestones=[], lr_decay=[], limit_train=100, limit_test=40, batch_size=16)
    m = train(smoke(tmp_path/'a', data_root=str(root), **kw))
    assert m['provenance']['data_dir'] == str(root/'FashionMNIST'/'raw')
    m = train(smoke(tmp_path/'b', data_root=str(tmp_path/'empty'), **kw))
    assert m['provenance']['data_dir'] == str(other_fmnist)
    assert json.loads((tmp_path/'b'/'metrics.json').read_text())['provenance']['data_dir'] == str(other_fmnist)


# ---------------------------------------------------------------- a missing image with loader workers
@pytest.mark.parametrize('workers', [0, 2])
def test_missing_image_is_one_line_with_any_workers(tmp_path, workers):
    lines = write_imagenet_lt(tmp_path, n_train=8, jpegs=True)
    ds = build_dataset('imagenet_lt', tmp_path, split='test', image_size=16)
    gone = tmp_path/'imagenet'/lines['test'][2].split()[0]
    gone.unlink()                                                      # disappears after the dataset was built
    with pytest.raises(FileNotFoundError) as e:
        for _ in make_loader(ds, 2, train=False, num_workers=workers): pass
    assert str(e.value) == f'imagenet_lt: image {gone} is missing'
