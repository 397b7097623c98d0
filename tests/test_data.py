"""Tests for ltpaper.data: every dataset format through build_dataset (small files written to tmp_path),
damaged and missing files, the fast path against torchvision's per-image transforms, make_loader."""
import gzip, hashlib, json, math, pickle

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from ltpaper import data as D
from ltpaper.data import readers as R   # where DEBIAN_FMNIST is read: patch it there
from ltpaper.cli import cli_fetch
from ltpaper.data import build_dataset, class_groups, fetch, longtail_counts, make_loader, read_idx

from helpers import idx_bytes, write_fmnist

torch.set_num_threads(1)
HAVE_DEBIAN = (D.DEBIAN_FMNIST/'train-images-idx3-ubyte.gz').is_file()


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    "Pretend Debian's Fashion-MNIST package is not installed."
    monkeypatch.setattr(R, 'DEBIAN_FMNIST', tmp_path/'no-debian-package')


# ---------------------------------------------------------------- writers of small files in the real formats
def _rows(n, start, marker):
    "n CIFAR rows (3072 bytes), row k identifies image start+k (bytes 0-1) and its split (byte 2)."
    k = np.arange(start, start + n)
    x = ((k[:, None] * 7 + np.arange(3072)[None]) % 256).astype(np.uint8)
    x[:, 0], x[:, 1], x[:, 2] = k // 256, k % 256, marker
    return x

def write_cifar10(root, per_class=12, test_per_class=3):
    d = root/'cifar-10-batches-py'; d.mkdir(parents=True)
    labels = np.random.default_rng(123).permutation(np.tile(np.arange(10), per_class))
    x = _rows(len(labels), 0, 0)
    for b, sl in enumerate(np.array_split(np.arange(len(labels)), 5)):
        batch = {'batch_label': f'training batch {b + 1} of 5', 'data': x[sl], 'labels': labels[sl].tolist()}
        if b == 0: batch = {k.encode(): v for k, v in batch.items()}  # bytes keys, as pickle.load(encoding='bytes') sees them
        (d/f'data_batch_{b + 1}').write_bytes(pickle.dumps(batch))
    tl = np.repeat(np.arange(10), test_per_class)
    (d/'test_batch').write_bytes(pickle.dumps({'data': _rows(len(tl), 0, 255), 'labels': tl.tolist()}))
    return x, labels

def write_cifar100(root, per_class=5):
    d = root/'cifar-100-python'; d.mkdir(parents=True)
    labels = np.tile(np.arange(100), per_class)
    (d/'train').write_bytes(pickle.dumps({'data': _rows(len(labels), 0, 0), 'fine_labels': labels.tolist(), 'coarse_labels': (labels // 5).tolist()}))
    (d/'test').write_bytes(pickle.dumps({'data': _rows(100, 0, 255), 'fine_labels': list(range(100))}))
    return labels

COLORS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (200, 200, 40)]  # per sorted-wnid class

def jpeg(path, color, size=(64, 64), gray=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8) + np.asarray(color, np.uint8)
    im = Image.fromarray(a)
    (im.convert('L') if gray else im).save(path, 'JPEG', quality=95)

def write_tiny(root, per_class=6, val_per_class=2):
    base = root/'tiny-imagenet-200'
    wnids = ['n09000004', 'n01000001', 'n05000003', 'n02000002']   # deliberately unsorted, as in the real wnids.txt
    base.mkdir(parents=True)
    (base/'wnids.txt').write_text('\n'.join(wnids) + '\n')
    srt = sorted(wnids)
    for c, w in enumerate(srt):
        for k in range(per_class):
            jpeg(base/'train'/w/'images'/f'{w}_{k}.JPEG', COLORS[c], gray=(c == 0 and k == 0))
        (base/'train'/w/f'{w}_boxes.txt').write_text('')
    ann = []
    for k in range(val_per_class * len(srt)):
        c = (k * 3) % len(srt)
        jpeg(base/'val'/'images'/f'val_{k}.JPEG', COLORS[c])
        ann.append(f'val_{k}.JPEG\t{srt[c]}\t0\t0\t63\t63')
    (base/'val'/'val_annotations.txt').write_text('\n'.join(ann) + '\n')
    return base, srt

def write_imagenet(root, counts=(10, 10, 10, 10), val_per_class=2, lt_files=True):
    "ImageNet folder (train/val by wnid) plus, optionally, OLTR-style split files using a subset of it."
    wnids = [f'n0{c}440764' for c in range(len(counts))]
    lines = {'train': [], 'val': [], 'test': []}
    for c, (w, n) in enumerate(zip(wnids, counts)):
        for k in range(n):
            jpeg(root/'imagenet'/'train'/w/f'{w}_{k}.JPEG', COLORS[c], size=(40 + k, 30))
        for k in range(val_per_class):
            jpeg(root/'imagenet'/'val'/w/f'ILSVRC2012_val_{c}{k}.JPEG', COLORS[c], size=(33, 37))
        lines['train'] += [f'train/{w}/{w}_{k}.JPEG {c}' for k in range(max(1, n // (c + 1)))]
        lines['val'] += [f'train/{w}/{w}_{n - 1}.JPEG {c}']
        lines['test'] += [f'val/{w}/ILSVRC2012_val_{c}{k}.JPEG {c}' for k in range(val_per_class)]
    if lt_files:
        (root/'ImageNet_LT').mkdir()
        for s, l in lines.items(): (root/'ImageNet_LT'/f'ImageNet_LT_{s}.txt').write_text('\n'.join(l) + '\n')
    return wnids, lines

def write_inat(root):
    base = root/'inaturalist2017'
    cats = [{'id': 9, 'name': 'c'}, {'id': 2, 'name': 'a'}, {'id': 5, 'name': 'b'}]   # unsorted, non-contiguous ids
    def split(name, per_cat, start):
        images, anns, k = [], [], start
        for cid, n in per_cat.items():
            for _ in range(n):
                fn = f'train_val_images/Aves/{cid}/{k}.jpg'
                jpeg(base/fn, COLORS[[2, 5, 9].index(cid)], size=(50, 40))
                images.append({'id': 1000 + k, 'file_name': fn, 'width': 50, 'height': 40})
                anns.append({'id': k, 'image_id': 1000 + k, 'category_id': cid})
                k += 1
        (base/name).write_text(json.dumps({'images': images[::-1], 'annotations': anns, 'categories': cats}))
    split('train2017.json', {2: 7, 5: 3, 9: 1}, 0)
    split('val2017.json', {2: 2, 5: 2, 9: 2}, 100)
    return base


# ---------------------------------------------------------------- profiles and groups
def test_longtail_counts_table1_totals():
    totals = {(5000, 10): [10_011, 12_406, 20_431, 50_000], (500, 100): [8_155, 10_847, 19_573, 50_000],
              (500, 200): [16_132, 21_549, 39_072, 100_000], (6000, 10): [12_013, 14_886, 24_516, 60_000]}
    for (n_max, C), want in totals.items():
        got = [sum(longtail_counts(n_max, C, IF)) for IF in (500, 100, 10, 1)]
        assert got == want, (n_max, C, got)
    assert longtail_counts(5000, 10, 100)[-1] == 50 and longtail_counts(500, 100, 500)[-1] == 1
    assert longtail_counts(100, 4, 10, 'step') == [100, 100, 10, 10]
    assert longtail_counts(100, 5, 10, 'step') == [100, 100, 10, 10, 10]
    with pytest.raises(ValueError, match='imbalance_factor'): longtail_counts(100, 10, 0)
    with pytest.raises(ValueError, match='profile'): longtail_counts(100, 10, 10, 'cosine')


def test_class_groups_quartile_and_shot():
    g = class_groups(longtail_counts(5000, 10, 100))
    assert list(g) == ['Many', 'Medium', 'Few', 'Rare'] and g == {'Many': [0, 1, 2], 'Medium': [3, 4, 5], 'Few': [6, 7], 'Rare': [8, 9]}
    assert class_groups([3, 7, 7, 1, 7]) == {'Many': [1, 2], 'Medium': [4], 'Few': [0], 'Rare': [3]}   # ties by class id
    assert [len(v) for v in class_groups(torch.arange(5089)).values()] == [1273, 1272, 1272, 1272]
    assert [len(v) for v in class_groups(np.ones(1000, int)).values()] == [250] * 4
    s = class_groups([500, 101, 100, 20, 19, 1], 'shot')
    assert list(s) == ['Many', 'Medium', 'Few'] and s == {'Many': [0, 1], 'Medium': [2, 3], 'Few': [4, 5]}
    with pytest.raises(ValueError, match='scheme'): class_groups([1, 2], 'decile')


# ---------------------------------------------------------------- CIFAR
def test_cifar10_lt_counts_content_seeds_splits(tmp_path):
    x, labels = write_cifar10(tmp_path)
    ds = build_dataset('cifar10_lt', tmp_path, imbalance_factor=10, seed=0)
    want = longtail_counts(12, 10, 10)
    assert ds.class_counts == want and len(ds) == sum(want) and ds.num_classes == 10
    assert torch.bincount(ds.targets, minlength=10).tolist() == want
    assert ds.images.dtype == torch.uint8 and tuple(ds.images.shape) == (sum(want), 3, 32, 32)
    src = ds.source_index.numpy()
    assert (ds.targets.numpy() == labels[src]).all()
    assert np.array_equal(ds.images.reshape(len(ds), -1).numpy(), x[src])      # the right pixels under the right label
    assert (ds.in_channels, ds.image_size, ds.mean) == (3, 32, (0.4914, 0.4822, 0.4465))
    img, y, i = ds[3]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and (y, i) == (int(ds.targets[3]), 3)
    # same seed, same subset; another seed, another subset (same counts)
    assert torch.equal(build_dataset('cifar10_lt', tmp_path, 10, seed=0).source_index, ds.source_index)
    other = build_dataset('cifar10_lt', tmp_path, 10, seed=1)
    assert other.class_counts == want and not torch.equal(other.source_index, ds.source_index)
    # test: the whole balanced test batch, training counts attached
    ts = build_dataset('cifar10_lt', tmp_path, 10, split='test')
    assert len(ts) == 30 and ts.class_counts == want and (ts.images[:, 0, 0, 2] == 255).all() and ts.source_split == 'test'
    # val: v per class from the training images, disjoint from the training subset, n_max reduced by v
    va = build_dataset('cifar10_lt', tmp_path, 10, split='val', val_per_class=2)
    tr = build_dataset('cifar10_lt', tmp_path, 10, split='train', val_per_class=2)
    assert torch.bincount(va.targets).tolist() == [2] * 10 and tr.class_counts == longtail_counts(10, 10, 10)
    assert va.class_counts == tr.class_counts
    assert not set(va.source_index.tolist()) & set(tr.source_index.tolist())
    assert va.source_split == 'train' and (va.images[:, 0, 0, 2] == 0).all()            # never a test image
    with pytest.raises(ValueError, match='val_per_class'): build_dataset('cifar10_lt', tmp_path, 10, split='val')
    with pytest.raises(ValueError, match='val_per_class=12'): build_dataset('cifar10_lt', tmp_path, 10, split='val', val_per_class=12)
    with pytest.raises(ValueError, match="split='dev'"): build_dataset('cifar10_lt', tmp_path, 10, split='dev')
    with pytest.raises(ValueError, match='unknown dataset'): build_dataset('cifar1000_lt', tmp_path)


def test_cifar100_lt(tmp_path):
    labels = write_cifar100(tmp_path)
    ds = build_dataset('cifar100_lt', tmp_path, imbalance_factor=5, seed=0)
    assert ds.class_counts == longtail_counts(5, 100, 5) and ds.num_classes == 100
    assert (ds.targets.numpy() == labels[ds.source_index.numpy()]).all()
    assert len(build_dataset('cifar100_lt', tmp_path, 5, split='test')) == 100


def test_cifar_damaged_and_missing_files(tmp_path):
    root = tmp_path/'cut'; write_cifar10(root)
    f = root/'cifar-10-batches-py'/'data_batch_3'
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(ValueError, match=r'data_batch_3: cannot load the CIFAR batch'): build_dataset('cifar10_lt', root)
    root = tmp_path/'mismatch'; write_cifar10(root)
    f = root/'cifar-10-batches-py'/'data_batch_2'
    d = pickle.loads(f.read_bytes()); d['labels'] = d['labels'][:-1]; f.write_bytes(pickle.dumps(d))
    with pytest.raises(ValueError, match=r'data_batch_2: 24 images but 23 labels'): build_dataset('cifar10_lt', root)
    root = tmp_path/'nolabel'; write_cifar10(root)
    f = root/'cifar-10-batches-py'/'test_batch'
    d = pickle.loads(f.read_bytes()); d['labels'] = [11] * len(d['labels']); f.write_bytes(pickle.dumps(d))
    with pytest.raises(ValueError, match=r'test_batch: labels outside 0..9'): build_dataset('cifar10_lt', root, 10, split='test')
    with pytest.raises(FileNotFoundError) as e: build_dataset('cifar10_lt', tmp_path/'empty')
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('cifar10_lt: dataset not found') and str(tmp_path/'empty'/'cifar-10-batches-py') in msg
    assert 'cifar-10-python.tar.gz' in msg and 'ltpaper fetch cifar10_lt' in msg
    (tmp_path/'partial'/'cifar-10-batches-py').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='missing data_batch_1'): build_dataset('cifar10_lt', tmp_path/'partial')


def test_fetch_cifar_checks_published_md5(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match=r'data_batch_1: md5 \w+ differs from the published c99cafc152244af753f735de768cd75f'):
        fetch('cifar10_lt', tmp_path, download=False)
    base = tmp_path/'cifar-10-batches-py'
    md5 = lambda n: hashlib.md5((base/n).read_bytes()).hexdigest()
    monkeypatch.setattr(torchvision.datasets.CIFAR10, 'train_list', [[f'data_batch_{i}', md5(f'data_batch_{i}')] for i in range(1, 6)])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, 'test_list', [['test_batch', md5('test_batch')]])
    assert fetch('cifar10_lt', tmp_path, download=False) == base


# ---------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize('gz', [True, False])
def test_fmnist_idx_files(tmp_path, no_debian, gz):
    src = write_fmnist(tmp_path/'FashionMNIST'/'raw', gz=gz)
    ds = build_dataset('fmnist_lt', tmp_path, imbalance_factor=4)
    assert ds.class_counts == longtail_counts(8, 10, 4) and tuple(ds.images.shape) == (len(ds), 1, 28, 28)
    x, y = src['train']
    assert (ds.targets.numpy() == y[ds.source_index.numpy()]).all()
    assert (ds.images[:, 0, 5, 5].numpy() == x[ds.source_index.numpy(), 5, 5]).all()
    ts = build_dataset('fmnist_lt', tmp_path, 4, split='test')
    assert len(ts) == 20 and ts.in_channels == 1 and ts.mean == (0.2860,)


def test_fmnist_damaged_and_missing_files(tmp_path, no_debian):
    raw = tmp_path/'a'/'FashionMNIST'/'raw'; write_fmnist(raw)
    f = raw/'train-images-idx3-ubyte.gz'
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:-28 * 28]))        # one image short of its header
    with pytest.raises(ValueError, match=r'train-images-idx3-ubyte.gz: IDX header says shape \(80, 28, 28\)'): build_dataset('fmnist_lt', tmp_path/'a', 4)
    raw = tmp_path/'b'/'FashionMNIST'/'raw'; write_fmnist(raw)
    f = raw/'t10k-labels-idx1-ubyte.gz'
    f.write_bytes(f.read_bytes()[:-10])                                                 # truncated gzip stream
    with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte.gz: cannot read the IDX file'): build_dataset('fmnist_lt', tmp_path/'b', 4, split='test')
    raw = tmp_path/'c'/'FashionMNIST'/'raw'; write_fmnist(raw)
    (raw/'train-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(np.zeros(79, int), D.IDX_LABELS)))
    with pytest.raises(ValueError, match=r'train-images-idx3-ubyte.gz holds 80 images but .*train-labels-idx1-ubyte.gz holds 79 labels'):
        build_dataset('fmnist_lt', tmp_path/'c', 4)
    raw = tmp_path/'d'/'FashionMNIST'/'raw'; write_fmnist(raw)
    (raw/'train-labels-idx1-ubyte.gz').write_bytes((raw/'train-images-idx3-ubyte.gz').read_bytes())
    with pytest.raises(ValueError, match=r'train-labels-idx1-ubyte.gz: IDX magic 0x00000803, expected 0x00000801'): build_dataset('fmnist_lt', tmp_path/'d', 4)
    with pytest.raises(FileNotFoundError) as e: build_dataset('fmnist_lt', tmp_path/'none', 4)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('fmnist_lt: dataset not found')
    assert str(tmp_path/'none'/'FashionMNIST'/'raw') in msg and str(R.DEBIAN_FMNIST) in msg and 'apt-get install dataset-fashion-mnist' in msg
    write_fmnist(tmp_path/'e'/'FashionMNIST'/'raw')                                    # well formed, but not the official sizes
    with pytest.raises(ValueError, match=r'train-images-idx3-ubyte.gz: 80 images .* the official split has 60000'):
        fetch('fmnist_lt', tmp_path/'e', download=False)


@pytest.mark.skipif(not HAVE_DEBIAN, reason="Debian's dataset-fashion-mnist is not installed")
def test_fmnist_real_debian_files(tmp_path, capsys):
    ds = build_dataset('fmnist_lt', tmp_path, imbalance_factor=100)
    ts = build_dataset('fmnist_lt', tmp_path, imbalance_factor=100, split='test')
    assert len(ds) == 14_886 and ds.class_counts == longtail_counts(6000, 10, 100) and len(ts) == 10_000
    assert torch.bincount(ts.targets).tolist() == [1000] * 10
    assert read_idx(D.DEBIAN_FMNIST/'train-labels-idx1-ubyte.gz', D.IDX_LABELS)[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    tr = build_dataset('fmnist_lt', tmp_path, 100, val_per_class=20)
    va = build_dataset('fmnist_lt', tmp_path, 100, split='val', val_per_class=20)
    assert len(va) == 200 and tr.class_counts == longtail_counts(5980, 10, 100)
    assert not set(va.source_index.tolist()) & set(tr.source_index.tolist()) and va.source_split == 'train'
    assert fetch('fmnist_lt', tmp_path, download=False) == D.DEBIAN_FMNIST
    assert cli_fetch(['fmnist_lt', '--root', str(tmp_path), '--no-download']) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'fmnist_lt: {D.DEBIAN_FMNIST} (') and 'sizes and IDX headers' in out


# ---------------------------------------------------------------- Tiny-ImageNet
def test_tinyimagenet_tree(tmp_path):
    base, wnids = write_tiny(tmp_path)
    ds = build_dataset('tinyimagenet_lt', tmp_path, imbalance_factor=6, seed=0)
    assert ds.class_counts == longtail_counts(6, 4, 6) == [6, 3, 1, 1] and ds.num_classes == 4
    assert tuple(ds.images.shape) == (11, 3, 64, 64) and ds.images.dtype == torch.uint8
    mean_rgb = ds.images.float().mean((2, 3))
    want = torch.tensor(COLORS, dtype=torch.float)[ds.targets]
    gray = torch.tensor([p.endswith(f'{wnids[0]}_0.JPEG') for p in np.array(R.read_tiny(base, 'train').paths)[ds.source_index.numpy()]])
    assert gray.sum() == 1                                                        # class 0 keeps all 6, the grayscale one too
    assert ((mean_rgb - want).abs().amax(1)[~gray] < 8).all()                    # class id = sorted-wnid order
    assert (mean_rgb[gray].std(1) < 1).all()                                      # the grayscale JPEG became 3 equal channels
    ts = build_dataset('tinyimagenet_lt', tmp_path, 6, split='test')
    assert len(ts) == 8 and ((ts.images.float().mean((2, 3)) - torch.tensor(COLORS, dtype=torch.float)[ts.targets]).abs() < 8).all()
    va = build_dataset('tinyimagenet_lt', tmp_path, 5, split='val', val_per_class=1)
    tr = build_dataset('tinyimagenet_lt', tmp_path, 5, split='train', val_per_class=1)
    assert len(va) == 4 and tr.class_counts == longtail_counts(5, 4, 5) == [5, 2, 1, 1]
    assert not set(va.source_index.tolist()) & set(tr.source_index.tolist())
    with pytest.raises(ValueError, match=r'wnids.txt: 4 classes, the official Tiny-ImageNet has 200'): fetch('tinyimagenet_lt', tmp_path, download=False)


def test_tinyimagenet_damaged_and_missing(tmp_path):
    base, wnids = write_tiny(tmp_path)
    bad = base/'train'/wnids[0]/'images'/f'{wnids[0]}_2.JPEG'
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match=f'{bad.name}: cannot decode the image'): build_dataset('tinyimagenet_lt', tmp_path, 6)
    (base/'val'/'val_annotations.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'tinyimagenet_lt: dataset not found .*missing val/val_annotations.txt'):
        build_dataset('tinyimagenet_lt', tmp_path, 6, split='test')


# ---------------------------------------------------------------- ImageNet-LT and the IF-100 variant
def test_imagenet_lt_split_files(tmp_path):
    wnids, lines = write_imagenet(tmp_path)
    ds = build_dataset('imagenet_lt', tmp_path, split='train', image_size=32)
    assert ds.images is None and len(ds.paths) == len(lines['train']) == len(ds)
    assert ds.class_counts == [10, 5, 3, 2] and ds.num_classes == 4 and ds.image_size == 32
    assert ds.paths[0] == str(tmp_path/'imagenet'/lines['train'][0].split()[0])
    x, y, i = ds[len(ds) - 1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and (y, i) == (3, len(ds) - 1)
    ts = build_dataset('imagenet_lt', tmp_path, split='test', image_size=32)
    va = build_dataset('imagenet_lt', tmp_path, split='val', image_size=32)
    assert len(ts) == 8 and len(va) == 4 and ts.class_counts == ds.class_counts and va.source_split == 'val'
    xb, yb, ib = next(iter(make_loader(ts, 5, train=False)))
    assert xb.shape == (5, 3, 32, 32) and yb.tolist() == ts.targets[:5].tolist() and ib.tolist() == [0, 1, 2, 3, 4]
    xb2 = next(iter(make_loader(ds, 4, train=True, seed=1)))[0]
    assert torch.equal(xb2, next(iter(make_loader(ds, 4, train=True, seed=1)))[0])  # torchvision path is seeded too
    with pytest.raises(ValueError, match='fast=True'): make_loader(ds, 4, True, fast=True)
    # damaged / missing
    f = tmp_path/'ImageNet_LT'/'ImageNet_LT_val.txt'
    f.write_text(f.read_text() + 'just-a-path.JPEG\n')
    with pytest.raises(ValueError, match=r'ImageNet_LT_val.txt: line 5 is not'): build_dataset('imagenet_lt', tmp_path, split='val')
    (tmp_path/'imagenet'/'train'/wnids[3]/f'{wnids[3]}_0.JPEG').unlink()
    with pytest.raises(FileNotFoundError, match=f'{wnids[3]}_0.JPEG listed in .*ImageNet_LT_train.txt is missing'): build_dataset('imagenet_lt', tmp_path)
    (tmp_path/'ImageNet_LT'/'ImageNet_LT_test.txt').unlink()
    with pytest.raises(FileNotFoundError, match=r'imagenet_lt: dataset not found .*ImageNet_LT_\{train,val,test\}.txt'): build_dataset('imagenet_lt', tmp_path)


def test_imagenet_lt_if100_from_train_folder(tmp_path):
    write_imagenet(tmp_path, counts=(12, 10, 9, 10), lt_files=False)                 # the largest class, the first, has 12
    ds = build_dataset('imagenet_lt_if100', tmp_path, imbalance_factor=4, seed=0, image_size=32)
    assert ds.class_counts == longtail_counts(12, 4, 4) == [12, 7, 4, 3] and len(ds.paths) == 26
    assert ds.class_counts[0] / ds.class_counts[-1] == 4                              # the realised factor is the one asked for
    assert not torch.equal(build_dataset('imagenet_lt_if100', tmp_path, 4, seed=5).source_index, ds.source_index)
    ts = build_dataset('imagenet_lt_if100', tmp_path, 4, split='test')               # the class-sorted val folder
    assert len(ts) == 8 and ts.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and ts.image_size == 224
    assert ds[0][0].shape == (3, 32, 32)
    (tmp_path/'ImageNet_LT').mkdir()
    (tmp_path/'ImageNet_LT'/'ImageNet_LT_test.txt').write_text(f'val/n03440764/ILSVRC2012_val_30.JPEG 3\n')
    assert build_dataset('imagenet_lt_if100', tmp_path, 4, split='test').targets.tolist() == [3]  # the split file wins


# ---------------------------------------------------------------- iNaturalist 2017
def test_inaturalist2017_json(tmp_path):
    base = write_inat(tmp_path)
    ds = build_dataset('inaturalist2017', tmp_path, split='train', image_size=24)
    assert ds.class_counts == [7, 3, 1] and ds.num_classes == 3 and len(ds) == 11      # ids 2, 5, 9 -> 0, 1, 2
    rgb = torch.stack([TF.to_tensor(ds.raw(i)).mean((1, 2)) * 255 for i in range(len(ds))])
    assert ((rgb - torch.tensor(COLORS[:3], dtype=torch.float)[ds.targets]).abs() < 8).all()
    va, ts = (build_dataset('inaturalist2017', tmp_path, split=s) for s in ('val', 'test'))
    assert len(va) == len(ts) == 6 and va.paths == ts.paths and torch.bincount(ts.targets).tolist() == [2, 2, 2]
    f = base/'val2017.json'
    f.write_text(f.read_text()[:-50])
    with pytest.raises(ValueError, match=r'val2017.json: not valid JSON'): build_dataset('inaturalist2017', tmp_path, split='test')


# ---------------------------------------------------------------- the fast path vs torchvision
def _chi2(a, b):
    "Two-sample chi-square statistic for two histograms of equal totals."
    a, b = np.asarray(a, float), np.asarray(b, float)
    m = (a + b) > 0
    return float((((a - b) ** 2)[m] / (a + b)[m]).sum())

def _decode_crop(o, p):
    "Recover (row offset, col offset, flipped) from crops of the coordinate image (ch0 = row+1, ch1 = col+1)."
    N, _, H, W = o.shape
    rv, cv = o[:, 0].amax(2).long(), o[:, 1].amax(1).long()                         # (N, H), (N, W)
    r0 = (rv > 0).float().argmax(1); c0 = (cv > 0).float().argmax(1)
    n = torch.arange(N)
    oy = rv[n, r0] - r0 + p - 1
    flip = cv[n, c0 + 1] < cv[n, c0]
    ox = torch.where(flip, cv[n, c0] - (W - 1 - c0), cv[n, c0] - c0) + p - 1
    return oy, ox, flip

@pytest.mark.parametrize('key,size,pad', [('crop4_flip', 32, 4), ('crop2_flip', 28, 2)])
def test_fast_crop_flip_draws_torchvision_distribution(key, size, pad):
    N = 3000
    r = torch.arange(size, dtype=torch.uint8)
    img = torch.stack([(r[:, None] + 1).expand(size, size), (r[None, :] + 1).expand(size, size)])   # (2, S, S)
    aug = D.AUGMENTATIONS[key]
    tv = aug.torchvision(True, size, (0.0, 0.0), (1 / 255, 1 / 255))                # the protocol's per-image twin, un-normalised
    torch.manual_seed(0)
    ref = torch.stack([tv(img) for _ in range(N)]).round()
    g = torch.Generator().manual_seed(0)
    fast = aug.apply(img.expand(N, 2, size, size), aug.draw(N, g)).float()
    K = 2 * pad + 1
    (ry, rx, rf), (fy, fx, ff) = _decode_crop(ref, pad), _decode_crop(fast, pad)
    assert ry.min() == fy.min() == 0 and ry.max() == fy.max() == 2 * pad
    hist = lambda y, x: np.bincount((y * K + x).numpy(), minlength=K * K)
    stat = _chi2(hist(ry, rx), hist(fy, fx))
    df = K * K - 1
    assert stat < df + 5 * math.sqrt(2 * df), stat                                     # chi-square, p < 1e-4
    assert abs(rf.float().mean() - ff.float().mean()) < 0.05 and abs(ff.float().mean() - 0.5) < 0.04
    # the same test does catch a wrong implementation: offsets on 0..2p-1 or flips at 0.6
    bad_off = torch.randint(0, 2 * pad, (N, 2), generator=g)
    by, bx, _ = _decode_crop(D.crop_flip_batch(img.expand(N, 2, size, size), bad_off, ff, pad).float(), pad)
    assert _chi2(hist(ry, rx), hist(by, bx)) > 200
    assert abs(rf.float().mean() - (torch.rand(N, generator=g) < 0.6).float().mean()) > 0.05


def _orient(o):
    "Angle of the ch0 blob's centroid about the centre, and the handedness of (ch0, ch1) centroids."
    N, _, H, W = o.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5 - H / 2, torch.arange(W) + 0.5 - W / 2, indexing='ij')
    w = o / o.sum((2, 3), keepdim=True).clamp_min(1)
    cx, cy = (w * xs).sum((2, 3)), (w * ys).sum((2, 3))                              # (N, 2)
    return torch.atan2(cy[:, 0], cx[:, 0]), (cx[:, 0] * cy[:, 1] - cy[:, 0] * cx[:, 1]) > 0

def test_fast_rotation_flips_match_torchvision():
    aug = D.AUGMENTATIONS['rotate90_flips']
    img = torch.zeros(2, 64, 64, dtype=torch.uint8)
    img[0, 30:34, 40:60] = 255                                                       # a bar to the right of the centre
    img[1, 4:24, 30:34] = 255                                                        # a bar above it
    # pixel-exact at fixed parameters, against torchvision's rotate + hflip + vflip
    for angle, hf, vf in [(-90.0, False, True), (-63.3, True, False), (0.0, True, True), (12.5, False, False), (89.9, True, True)]:
        ref = TF.rotate(img, angle, fill=[0.0, 0.0])
        ref = TF.vflip(ref) if vf else ref
        ref = TF.hflip(ref) if hf else ref
        mine = D.rotate_flip_batch(img[None].float(), torch.tensor([angle]), torch.tensor([hf]), torch.tensor([vf]))[0]
        assert (mine == ref.float()).float().mean() > 0.99, angle
    # the same distribution as the per-image RandomRotation(90) + RandomHorizontalFlip + RandomVerticalFlip
    N = 2000
    tv = aug.torchvision(True, 64, (0.0, 0.0), (1 / 255, 1 / 255))
    torch.manual_seed(0)
    ref = torch.stack([tv(img) for _ in range(N)]).round()
    fast = aug.apply(img.expand(N, 2, 64, 64), aug.draw(N, torch.Generator().manual_seed(0)))
    bins = lambda a: np.histogram(a.numpy(), bins=12, range=(-math.pi, math.pi))[0]
    (ra, rh), (fa, fh) = _orient(ref), _orient(fast)
    assert _chi2(bins(ra), bins(fa)) < 40 and abs(rh.float().mean() - fh.float().mean()) < 0.05
    # and catches a wrong angle range (±45° instead of ±90°)
    p = aug.draw(N, torch.Generator().manual_seed(1)); p['angle'] = p['angle'] / 2
    assert _chi2(bins(ra), bins(_orient(aug.apply(img.expand(N, 2, 64, 64), p))[0])) > 100


# ---------------------------------------------------------------- make_loader
def test_make_loader_determinism_epochs_and_sharding(tmp_path):
    write_cifar10(tmp_path, per_class=12)
    ds = build_dataset('cifar10_lt', tmp_path, imbalance_factor=2)
    assert len(ds) % 3 and len(ds) % 4 and len(ds) % 16                              # shards and batches need padding / a partial batch
    N = len(ds)
    run = lambda **kw: [tuple(t.clone() for t in b) for b in make_loader(ds, 16, **kw)]
    a, b = run(train=True, seed=7), run(train=True, seed=7)
    assert len(a) == len(make_loader(ds, 16, True)) == math.ceil(N / 16)
    assert all(torch.equal(u, v) for p, q in zip(a, b) for u, v in zip(p, q))          # same seed, same batches
    idx = torch.cat([t[2] for t in a])
    assert torch.equal(torch.sort(idx).values, torch.arange(N)) and not torch.equal(idx, torch.arange(N))
    x, y, i = a[0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) and torch.equal(y, ds.targets[i])
    dl = make_loader(ds, 16, True, seed=7)
    dl.set_epoch(1); e1 = torch.cat([t[2] for t in dl])
    dl.set_epoch(0); e0 = torch.cat([t[2] for t in dl])
    assert torch.equal(e0, idx) and not torch.equal(e1, idx)
    assert not torch.equal(torch.cat([t[2] for t in make_loader(ds, 16, True, seed=8)]), idx)
    # eval: dataset order, fast path == per-image torchvision normalisation
    fe, se = run(train=False), run(train=False, fast=False)
    assert torch.equal(torch.cat([t[2] for t in fe]), torch.arange(N))
    assert all(torch.allclose(p[0], q[0], atol=1e-5) and torch.equal(p[1], q[1]) for p, q in zip(fe, se))
    # the torchvision path: same order as the fast path, augmentation seeded per (seed, epoch, index), any num_workers
    s0, s1 = run(train=True, seed=7, fast=False), run(train=True, seed=7, fast=False, num_workers=1)
    assert all(torch.equal(p[2], q[2]) for p, q in zip(a, s0))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(s0, s1))
    # DDP sharding: equal batches per rank, shards cover the dataset, padding as DistributedSampler
    for ws, drop in [(3, False), (4, False), (3, True)]:
        shards = [[t[2] for t in make_loader(ds, 8, True, seed=7, rank=r, world_size=ws, drop_last=drop)] for r in range(ws)]
        assert len({len(s) for s in shards}) == 1
        allidx = torch.cat([torch.cat(s) for s in shards])
        per = N // ws if drop else math.ceil(N / ws)
        assert len(allidx) == (ws * (per // 8) * 8 if drop else ws * per)
        if not drop: assert torch.equal(torch.unique(allidx), torch.arange(N))
        assert not set(shards[0][0].tolist()) & set(shards[1][0].tolist())
    with pytest.raises(ValueError, match='rank'): make_loader(ds, 8, True, rank=2, world_size=2)


# ---------------------------------------------------------------- CLI
def test_cli_fetch_errors_are_one_line(tmp_path, capsys, no_debian):
    assert cli_fetch(['fmnist_lt', '--root', str(tmp_path), '--no-download']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('ltpaper fetch: fmnist_lt: dataset not found')
    assert cli_fetch(['imagenet_lt', '--root', str(tmp_path)]) == 2                   # no download exists for ImageNet
    assert 'ImageNet_LT' in capsys.readouterr().err
    assert cli_fetch(['mnist']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'invalid choice' in err
    write_fmnist(tmp_path/'FashionMNIST'/'raw')
    assert cli_fetch(['fmnist_lt', '--root', str(tmp_path), '--no-download']) == 2    # found, but not the official sizes
    assert 'official split has 60000' in capsys.readouterr().err
