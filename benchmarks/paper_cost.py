"""What the paper's Tables 1-3 cost a reproducer: per-epoch times of the `paper` profiles on full-size files, projected to hours.

    python benchmarks/paper_cost.py [--tables table1,table2,table3] [--device cuda|cpu] [--steps 200] [--warmup 10]
                                    [--step eager|compiled|aot_eager] [--families softmax,ours,seesaw,ghm] [--only GLOBS]
                                    [--deadline-s 420] [--reuse DIR] [--out DIR] [--dry-run] [--commit SHA]
    python benchmarks/paper_cost.py --device cpu --steps 3 --warmup 1 --only 'cifar10_lt:*'     # a CPU trial

1. Files in the real on-disk formats that ltpaper's readers read (nbs/data/02_readers.ipynb), written into --data-dir
   (a temporary folder unless given), each dataset just before its first measurement:
   - CIFAR-10 (`cifar-10-batches-py/data_batch_1..5`, `test_batch`) and CIFAR-100 (`cifar-100-python/train`, `test`):
     Python pickles at the real full sizes (50,000 + 10,000 random 32x32 images, exactly 5,000/500 per class), so the
     long-tailed subset of every IF is the real one;
   - Tiny-ImageNet (`tiny-imagenet-200/`: wnids.txt, train/<wnid>/images/*.JPEG, val/val_annotations.txt): 200 classes
     of 64x64 JPEGs, --tiny-per-class train images per class and 10 val images per class (fewer than the real 500);
   - ImageNet (`imagenet/train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`, 1,000 classes) for `imagenet_lt_if100` and
     iNaturalist 2017 (`inaturalist2017/train2017.json`, `val2017.json`, `train_val_images/<super>/<id>/*.jpg`, 5,089
     categories): a pool of --jpeg-train / --jpeg-test JPEGs at realistic sizes (500x375, about 108 KB, ImageNet's
     mean file size; 800x600, about 272 KB, iNaturalist 2017's 186 GB / 675,170 images), smooth images with noise.
   Random pixels: the times depend on the image and file sizes, not on what the images show.
2. For every row of each table, the `paper` profile's TrainConfig (ltpaper.pipeline.tables.expand_table). A step's work depends
   on the dataset (model, batch, image size, classes, data path) and on the loss, not on the imbalance factor, which
   only sets the number of steps per epoch: so one measurement serves every IF of a (dataset, loss family). Families:
   `ours` (ours, ours_tuned, ours_study: measured with the paper's `ours`, R+A+AU, the most work of them), `seesaw`,
   `ghm`, and `softmax` for the losses that only reweight cross-entropy (softmax, class_balanced, focal,
   effective_number, equalization, ...). A family left out of --families is timed by the softmax measurement: the
   plan and the summary say so, row by row.
3. Each measurement builds the run as `ltpaper.train` does (a `Run`: datasets, loaders, model, loss, SGD; the loss
   then rebuilt with the real long-tailed class counts of the row, since the pools are balanced), takes --warmup steps
   (at least 3 with a compiled step: `ours` recompiles at its second step), then times --steps steps of `Run.step`
   (the eager loop or the compiled step, with the weight monitor of `ours`; --step eager by default, what
   `ltpaper reproduce --profile paper` runs), the time to the first batch of a fresh epoch (loader start: workers,
   the epoch's draws), and the evaluation pass (`ltpaper.train.evaluation.evaluate`) over --eval-batches batches.
   In-memory sets (CIFAR, Tiny-ImageNet: decoded once, on the device) cycle through their epochs; sets read from
   files (ImageNet, iNaturalist: per-image decoding and augmentation in DataLoader workers) are tiled from the pool
   so that the timed steps are one epoch of the real loader. The repeated files come from the page cache, as the
   ImageNet-LT subset (about 30 GB) does after its first epoch on a 128 GB machine; iNaturalist 2017 (186 GB) does
   not fit there, so its disk reads are NOT in the measurement.
4. Seconds per epoch = loader start + steps per epoch (from the real long-tailed subset's size at that IF and the batch
   size, with the loader's rule for the last batch) x seconds per step + the evaluation pass (real test-set size x
   seconds per image + its loader start) x evaluations per epoch. A table's hours = sum over its rows of seeds x
   epochs x seconds per epoch (the per-run set-up, reading the real file lists and building the model, is left
   out: seconds against hours). Table 3's rows that are Table 2's runs (`same_as`) cost nothing extra.
5. --deadline-s counts from the start: a measurement still running at the deadline stops (its timing is kept when at
   least --min-steps steps were timed, marked as cut short), the rest are reported "not measured", and every row
   that needs one of them has no projection: a table with such a row shows its total as missing, beside the sum of
   its measured rows. Nothing is extrapolated. A later call with --reuse DIR (an earlier call's output, same device and
   --step) keeps those measurements, marked with where they come from, and measures the rest.

Writes paper_cost.json and paper_cost.md into --out (default benchmarks/results/paper_cost_<device>/, <device> the GPU's
name or cpu<cores>-<arch>) and prints the Markdown. The device is in every title: a CPU trial is labelled as one.
Needs a CUDA device unless --device cpu is given.
"""
import argparse, copy, fnmatch, gc, json, math, os, pickle, platform, shutil, socket, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABLES = ('table1', 'table2', 'table3')
FAMILIES = ('softmax', 'ours', 'seesaw', 'ghm')          # measurement order within a dataset pass: most used first
FAMILY = dict(ours='ours', ours_tuned='ours', ours_study='ours', seesaw='seesaw', ghm='ghm')   # else: softmax
REPRESENTATIVE = dict(softmax='softmax', ours='ours', seesaw='seesaw', ghm='ghm')   # the loss each family is timed with
# Real sizes (data/README.md, nbs/method.ipynb "Protocols"): the long-tailed train set is the exponential profile from
# n_max over `classes` at the row's IF, except iNaturalist 2017, whose long tail is fixed by its files.
REAL = {
    'cifar10_lt': dict(n_max=5000, classes=10, test=10_000),
    'cifar100_lt': dict(n_max=500, classes=100, test=10_000),
    'tinyimagenet_lt': dict(n_max=500, classes=200, test=10_000),
    'imagenet_lt_if100': dict(n_max=1300, classes=1000, test=50_000),        # the ImageNet val set (or ImageNet_LT_test.txt)
    'inaturalist2017': dict(train=579_184, classes=5089, test=95_986, n_max=3919, imbalance_factor=435),
}
IMAGENET_SIZE, INAT_SIZE = (500, 375), (800, 600)      # (width, height) of the pool JPEGs
JPEG_NOISE, JPEG_QUALITY = 16, 90                      # -> about 108 KB at 500x375, 272 KB at 800x600 (measured here)


# ---------------------------------------------------------------------------------------------------- real sizes
def real_counts(dataset, imbalance_factor) -> list:
    "Training images per class of the real long-tailed set (iNaturalist: an exponential stand-in with its n_max and IF)."
    from ltpaper.data import longtail_counts
    r = REAL[dataset]
    return longtail_counts(r['n_max'], r['classes'], r.get('imbalance_factor', imbalance_factor))

def real_train_size(dataset, imbalance_factor) -> int:
    "Images in the real long-tailed training set (ImageNet IF 100: the profile's total, before capping the few classes with fewer images)."
    return REAL[dataset].get('train') or sum(real_counts(dataset, imbalance_factor))

def steps_per_epoch(n_images, batch_size) -> int:
    "Batches of one epoch, as ltpaper.train.run_data builds the train loader (the last batch is dropped only when it would hold 1 image)."
    return n_images // batch_size if n_images % batch_size == 1 else math.ceil(n_images / batch_size)

def evals_per_run(epochs, eval_every) -> int:
    "Evaluation passes of a run: every `eval_every` epochs and after the last."
    return sum(1 for e in range(1, epochs + 1) if e % eval_every == 0 or e == epochs)


# ---------------------------------------------------------------------------------------------------- the plan
def family(loss, families=FAMILIES) -> str:
    "The measurement family of a loss: its own when it is in `families`, else softmax's."
    f = FAMILY.get(loss, 'softmax')
    return f if f in families else 'softmax'

@dataclass
class PlanRow:
    "One table row with what its cost needs."
    table: str
    row: str
    dataset: str
    imbalance_factor: float
    loss: str
    key: str                 # 'dataset:family', the measurement that times it
    seeds: int
    epochs: int
    batch_size: int
    eval_every: int
    own: bool                # False: the run is another table's (`same_as`): no extra cost
    runs_of: str             # table/row whose runs these are
    note: str = ''

@dataclass
class Measurement:
    "One distinct cost: a (dataset, loss family), timed with the `paper` TrainConfig of one of its rows."
    key: str
    dataset: str
    family: str
    loss: str
    from_row: str            # table/row whose TrainConfig is timed
    train: dict              # that row's TrainConfig dict (loss set to the family's representative)
    imbalance_factor: float  # the row's IF (its real class counts go into the loss)
    rows: list = field(default_factory=list)   # table/row of every row it times

_SHAPE = ('model', 'batch_size', 'eval_batch_size', 'amp', 'channels_last', 'num_workers', 'step')   # what one measurement assumes shared

def _expand(tables, families) -> list:
    "(PlanRow, TrainConfig dict) of every row of `tables` under the `paper` profile."
    from ltpaper.pipeline.tables import expand_table, load_table
    out = []
    for t in tables:
        seeds = len(load_table(t)['seeds'])
        for r in expand_table(t, 'paper'):
            c, own = r.train, r.run_table == t
            key = f"{r.dataset}:{family(c['loss'], families)}"
            runs_of = f'{r.run_table}/{r.run_row}'
            out.append((PlanRow(t, r.name, r.dataset, r.imbalance_factor, c['loss'], key, seeds, c['epochs'], c['batch_size'],
                                c['eval_every'], own, runs_of, '' if own else f'runs of {runs_of}'), c))
    return out

def _pick(cands):
    "The candidate row to time: the IF-100 one (the tables' headline column) if there is one, else the first."
    return next(((r, c) for r, c in cands if r.imbalance_factor == 100), cands[0])

def make_plan(tables=TABLES, families=FAMILIES, only=None) -> tuple[list, list]:
    "(rows, measurements) of `tables` under the `paper` profile; measurements in the order they run: family-major."
    rows = _expand(tables, families)
    meas = {}
    for key in dict.fromkeys(r.key for r, _ in rows if r.own):
        mine = [(r, c) for r, c in rows if r.key == key and r.own]
        fam = key.split(':')[1]
        rep = REPRESENTATIVE[fam]
        r, c = _pick([(r, c) for r, c in mine if c['loss'] == rep] or mine)
        train = dict(c, loss=rep, loss_params=c['loss_params'] if c['loss'] == rep else {})
        odd = [f'{x.table}/{x.row}' for x, cx in mine if any(cx[k] != c[k] for k in _SHAPE)]
        if odd: raise ValueError(f'{key}: rows {odd[:3]} differ from {r.table}/{r.row} in {_SHAPE}: they need a measurement of their own')
        meas[key] = Measurement(key, r.dataset, fam, rep, f'{r.table}/{r.row}', train, r.imbalance_factor,
                                [f'{x.table}/{x.row}' for x, _ in mine])
        for x, cx in mine:
            if FAMILY.get(cx['loss'], 'softmax') != fam: x.note = f"timed by {key} ({cx['loss']} is not in --families)"
            elif (cx['loss'], cx['loss_params']) != (rep, train['loss_params']):
                x.note = f"timed by {key} ({cx['loss']}{' ' + json.dumps(cx['loss_params']) if cx['loss_params'] else ''})"
    order = [m for f in FAMILIES for m in meas.values() if m.family == f]
    return [r for r, _ in rows], [m for m in order if not only or any(fnmatch.fnmatchcase(m.key, g) for g in only)]


# ---------------------------------------------------------------------------------------------------- the projection
def epoch_seconds(row: PlanRow, m: dict|None) -> float|None:
    "Seconds per epoch of a row from its measurement's timings (None when it was not measured)."
    if not m or m.get('status') not in ('measured', 'cut short') or m.get('eval_s_per_image') is None: return None
    steps = steps_per_epoch(real_train_size(row.dataset, row.imbalance_factor), m['batch_size'])
    train = m['train_start_s'] + steps * m['s_per_step']
    evals = evals_per_run(row.epochs, row.eval_every) / row.epochs
    return train + evals * (m['eval_start_s'] + REAL[row.dataset]['test'] * m['eval_s_per_image'])

def project(rows, s_epoch) -> dict:
    """Per table: hours = sum over its own rows of seeds x epochs x s_epoch(row) / 3600; None when any row has no time.
    `s_epoch` maps 'table/row' to seconds per epoch (or None)."""
    out = {}
    for t in dict.fromkeys(r.table for r in rows):
        own = [r for r in rows if r.table == t and r.own]
        secs = [(r, s_epoch.get(f'{r.table}/{r.row}')) for r in own]
        have = [r.seeds * r.epochs * s for r, s in secs if s is not None]
        missing = [f'{r.table}/{r.row}' for r, s in secs if s is None]
        out[t] = dict(rows=len([r for r in rows if r.table == t]), own_rows=len(own), runs=sum(r.seeds for r in own),
                      shared_rows=[f'{r.table}/{r.row} = {r.runs_of}' for r in rows if r.table == t and not r.own],
                      hours=None if missing else sum(have) / 3600, measured_rows=len(have), measured_rows_hours=sum(have) / 3600,
                      missing_rows=missing)
    tot = [v['hours'] for v in out.values()]
    out['all'] = dict(hours=None if None in tot else sum(tot), measured_rows_hours=sum(v['measured_rows_hours'] for v in out.values()))
    return out


# ---------------------------------------------------------------------------------------------------- files in the real formats
def _cifar_batch(x, labels, label_key, name, **extra) -> bytes:
    """One CIFAR batch with the keys and arrays the published files give `pickle.load(f, encoding='latin1')`, at their size
    (those are Python-2 pickles; protocol 2 from Python 3 would store the image bytes 1.5x larger)."""
    d = {'batch_label': name, label_key: labels.tolist(), 'data': x, 'filenames': [f'img_{k}.png' for k in range(len(labels))], **extra}
    return pickle.dumps(d, protocol=4)

def write_cifar10(root, seed=0) -> Path:
    "cifar-10-batches-py/ at the real sizes: 5 train batches of 10,000 (5,000 per class) and a test batch of 10,000."
    d = Path(root)/'cifar-10-batches-py'
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(10), 5000))
    for b in range(5):
        x = rng.integers(0, 256, (10_000, 3072), dtype=np.uint8)
        (d/f'data_batch_{b + 1}').write_bytes(_cifar_batch(x, y[b * 10_000:(b + 1) * 10_000], 'labels', f'training batch {b + 1} of 5'))
    yt = rng.permutation(np.repeat(np.arange(10), 1000))
    (d/'test_batch').write_bytes(_cifar_batch(rng.integers(0, 256, (10_000, 3072), dtype=np.uint8), yt, 'labels', 'testing batch 1 of 1'))
    (d/'batches.meta').write_bytes(pickle.dumps({'label_names': [f'c{k}' for k in range(10)], 'num_cases_per_batch': 10_000,
                                                 'num_vis': 3072}, protocol=4))
    return d

def write_cifar100(root, seed=0) -> Path:
    "cifar-100-python/ at the real sizes: train 50,000 (500 per class), test 10,000 (100 per class), fine and coarse labels."
    d = Path(root)/'cifar-100-python'
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (('train', 500), ('test', 100)):
        y = rng.permutation(np.repeat(np.arange(100), n))
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        (d/name).write_bytes(_cifar_batch(x, y, 'fine_labels', name, coarse_labels=(y // 5).tolist()))
    (d/'meta').write_bytes(pickle.dumps({'fine_label_names': [f'f{k}' for k in range(100)],
                                         'coarse_label_names': [f'c{k}' for k in range(20)]}, protocol=4))
    return d

def _photo(seed, width, height, noise=JPEG_NOISE):
    "A smooth random RGB image with pixel noise (JPEG file sizes like photographs'), uint8 (H, W, 3)."
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32)
    a += rng.normal(0, noise, a.shape).astype(np.float32)
    return a.clip(0, 255).astype(np.uint8)

def _write_jpegs(jobs):
    "Write (path, seed, width, height, noise) JPEGs; returns their total bytes."
    from PIL import Image
    n = 0
    for path, seed, w, h, noise in jobs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(seed, w, h, noise)).save(path, 'JPEG', quality=JPEG_QUALITY)
        n += os.path.getsize(path)
    return n

def write_jpegs(jobs, workers=1) -> int:
    "Write the JPEGs of `jobs`, in `workers` processes; total bytes."
    if workers <= 1 or len(jobs) < 64: return _write_jpegs(jobs)
    chunks = [jobs[k::workers * 4] for k in range(workers * 4)]
    with ProcessPoolExecutor(workers) as ex: return sum(ex.map(_write_jpegs, chunks))

def write_tiny(root, per_class=50, val_per_class=10, classes=200, workers=1) -> dict:
    "tiny-imagenet-200/ with `classes` wnids of 64x64 JPEGs: train/<wnid>/images/, <wnid>_boxes.txt, val/images/, val_annotations.txt."
    base = Path(root)/'tiny-imagenet-200'
    wnids = [f'n{7_000_000 + 13 * k:08d}' for k in range(classes)]
    base.mkdir(parents=True, exist_ok=True)
    (base/'wnids.txt').write_text('\n'.join(wnids[::-1]) + '\n')        # the real file is not sorted either
    jobs, ann = [], []
    for c, w in enumerate(wnids):
        jobs += [(str(base/'train'/w/'images'/f'{w}_{k}.JPEG'), c * 100_003 + k, 64, 64, 8) for k in range(per_class)]
        (base/'train'/w).mkdir(parents=True, exist_ok=True)
        (base/'train'/w/f'{w}_boxes.txt').write_text(''.join(f'{w}_{k}.JPEG\t0\t0\t63\t63\n' for k in range(per_class)))
    for k in range(val_per_class * classes):
        jobs.append((str(base/'val'/'images'/f'val_{k}.JPEG'), 10**9 + k, 64, 64, 8))
        ann.append(f'val_{k}.JPEG\t{wnids[k % classes]}\t0\t0\t63\t63')
    (base/'val').mkdir(parents=True, exist_ok=True)
    (base/'val'/'val_annotations.txt').write_text('\n'.join(ann) + '\n')
    return dict(folder=str(base), files=len(jobs), bytes=write_jpegs(jobs, workers))

def write_imagenet(root, n_train=2048, n_test=1024, classes=1000, size=IMAGENET_SIZE, workers=1) -> dict:
    "imagenet/train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (class-sorted val, as valprep.sh leaves it); image k in class k % classes."
    base = Path(root)/'imagenet'
    wnids = [f'n{1_440_764 + 7 * c:08d}' for c in range(classes)]
    jobs = [(str(base/'train'/wnids[k % classes]/f'{wnids[k % classes]}_{k}.JPEG'), k, *size, JPEG_NOISE)
            for k in range(max(n_train, classes))]
    jobs += [(str(base/'val'/wnids[k % classes]/f'ILSVRC2012_val_{k + 1:08d}.JPEG'), 10**9 + k, *size, JPEG_NOISE)
             for k in range(max(n_test, classes))]          # every train class needs its val folder
    return dict(folder=str(base), files=len(jobs), bytes=write_jpegs(jobs, workers))

def write_inat(root, n_train=2048, n_test=1024, classes=5089, size=INAT_SIZE, workers=1) -> dict:
    "inaturalist2017/: train2017.json and val2017.json (COCO style, `classes` categories) and train_val_images/<super>/<id>/*.jpg."
    base = Path(root)/'inaturalist2017'
    supers = ['Plantae', 'Insecta', 'Aves', 'Reptilia', 'Mammalia', 'Fungi', 'Amphibia', 'Mollusca', 'Animalia', 'Arachnida',
              'Actinopterygii', 'Chromista', 'Protozoa']
    cats = [dict(id=c, name=f'species {c}', supercategory=supers[c % len(supers)]) for c in range(classes)]
    jobs = []
    for name, n, start in (('train2017.json', n_train, 0), ('val2017.json', n_test, 10**7)):
        images, anns = [], []
        for k in range(n):
            c = cats[k % classes]
            fn = f"train_val_images/{c['supercategory']}/{c['name'].replace(' ', '_')}/{start + k:08x}.jpg"
            images.append(dict(id=start + k, file_name=fn, width=size[0], height=size[1], license=1))
            anns.append(dict(id=start + k, image_id=start + k, category_id=c['id']))
            jobs.append((str(base/fn), start + k, *size, JPEG_NOISE))
        base.mkdir(parents=True, exist_ok=True)
        (base/name).write_text(json.dumps(dict(info={}, images=images, annotations=anns, categories=cats)))
    return dict(folder=str(base), files=len(jobs), bytes=write_jpegs(jobs, workers))

def write_dataset(name, root, ns) -> dict:
    "The files of one dataset under `root`; what was written (files, bytes, seconds)."
    t = time.perf_counter()
    w = ns.write_workers
    if name == 'cifar10_lt': info = dict(folder=str(write_cifar10(root)), files=None, bytes=None)
    elif name == 'cifar100_lt': info = dict(folder=str(write_cifar100(root)), files=None, bytes=None)
    elif name == 'tinyimagenet_lt': info = write_tiny(root, ns.tiny_per_class, 10, workers=w)
    elif name == 'imagenet_lt_if100': info = write_imagenet(root, ns.jpeg_train, ns.jpeg_test, workers=w)
    elif name == 'inaturalist2017': info = write_inat(root, ns.jpeg_train, ns.jpeg_test, workers=w)
    else: raise ValueError(f'no writer for {name}')
    if info['bytes'] is None:        # the pickles: report the largest (CIFAR-10's batches are 30.7 MB each, CIFAR-100's train 154 MB)
        sizes = [p.stat().st_size for p in Path(info['folder']).iterdir()]
        info.update(files=len(sizes), bytes=sum(sizes), largest_file_mb=round(max(sizes) / 1e6, 1))
    info['mean_file_kb'] = round(info['bytes'] / info['files'] / 1024, 1)
    info['folder'] = str(Path(info['folder']).relative_to(root))          # under --data-dir (a temporary folder by default)
    info['write_s'] = round(time.perf_counter() - t, 1)
    return info


# ---------------------------------------------------------------------------------------------------- timing one measurement
class Window:
    "`n` batches drawn from a shared iterator (len() = n), stopping early at `stop_at` (time.monotonic); idx shifted by `shift`."
    def __init__(self, it, n, stop_at=None, shift=0):
        self.it, self.n, self.stop_at, self.shift, self.done = it, n, stop_at, shift, 0
    def __len__(self): return self.n
    def set_epoch(self, epoch): pass        # the shared iterator (`cycle`) sets the loader's epochs
    def __iter__(self):
        for _ in range(self.n):
            if self.stop_at is not None and time.monotonic() > self.stop_at: return
            x, y, i = next(self.it)
            self.done += 1
            yield x, y, i - self.shift

def cycle(loader):
    "The loader's batches epoch after epoch (set_epoch 0, 1, ...), as `train` iterates them."
    e = 0
    while True:
        loader.set_epoch(e)
        yield from loader
        e += 1

def tiled(ds, n):
    "A copy of LTDataset `ds` whose items are its own repeated to `n` (a file pool standing in for a larger set)."
    idx = np.arange(n) % len(ds)
    view = copy.copy(ds)
    view.targets = ds.targets[idx]
    view.source_index = ds.source_index[idx]
    if ds.images is not None: view.images = ds.images[idx]
    if ds.paths is not None: view.paths = [ds.paths[i] for i in idx]
    return view

def _sync(device):
    import torch
    if device.type == 'cuda': torch.cuda.synchronize()

def first_batch_s(loader) -> float:
    "Seconds from a fresh iteration of `loader` to its first batch (workers started, the epoch's order and draws made)."
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    s = time.perf_counter() - t
    it.close()
    return s

def _run_config(m: Measurement, root, device, ns) -> dict:
    "The measured TrainConfig dict: the row's, with the synthetic data's root and the run-control fields of this benchmark."
    c = dict(m.train, data_root=str(root), device=device, step=ns.step, progress=False, resume=False, keep_checkpoint=False, out_dir=None)
    if ns.workers is not None: c['num_workers'] = ns.workers
    c['num_workers'] = min(c['num_workers'], os.cpu_count() or 1)
    if m.dataset in ('tinyimagenet_lt', 'imagenet_lt_if100'): c['imbalance_factor'] = 1   # the pools are balanced: all of them train
    if ns.eval_images and m.dataset in ('cifar10_lt', 'cifar100_lt'): c['limit_test'] = ns.eval_images
    if ns.trial_batch: c.update(batch_size=ns.trial_batch, eval_batch_size=ns.trial_batch)
    return c

def _train_steps(r, device, ns, stop_at) -> dict:
    "Warm-up, then timed steps of `Run.step` (the loop `train` runs) on one continuous stream of batches."
    from ltpaper.data import make_loader
    c = r.c
    loader = r.train_loader
    if r.train_set.images is None:          # files: one epoch of the real loader covers warm-up and timed steps
        loader = make_loader(tiled(r.train_set, (ns.warmup + ns.steps) * loader.batch_size), loader.batch_size, train=True,
                             device=device, seed=c.seed, fast=c.fast_data, num_workers=c.num_workers)
    it = cycle(loader)
    t = time.perf_counter()
    r.train_loader = Window(it, ns.warmup, stop_at)
    r.start_epoch(0)                        # the warm-up lr (epoch 0): random data at a large lr may diverge
    for batch in r.train_loader: r.step(batch)
    r.epoch_totals()
    warm = time.perf_counter() - t
    if r.train_loader.done < ns.warmup:
        it.close()
        return dict(status='not measured', why='deadline during the warm-up steps')
    r.train_loader = w = Window(it, ns.steps, stop_at)
    r.start_epoch(0)
    _sync(device)
    t = time.perf_counter()
    for batch in w: r.step(batch)
    r.epoch_totals()                        # ends with a read of the loss totals from the device
    _sync(device)
    dt = time.perf_counter() - t
    it.close()
    if w.done < ns.min_steps: return dict(status='not measured', why=f'deadline after {w.done} timed steps (< --min-steps {ns.min_steps})')
    return dict(status='measured' if w.done == ns.steps else 'cut short', steps_timed=w.done, warmup_steps=ns.warmup,
                warmup_s=round(warm, 2), s_per_step=dt / w.done, images_per_s=w.done * loader.batch_size / dt)

def _eval_pass(r, device, ns, stop_at) -> dict:
    "Seconds per test image of `evaluate` (the pass `train` runs each epoch) over --eval-batches batches after one warm-up batch."
    from ltpaper.data import make_loader
    from ltpaper.train.evaluation import evaluate
    c, bs = r.c, r.test_loader.batch_size
    n = (1 + ns.eval_batches) * bs
    ds = tiled(r.test_set, n)
    it = iter(make_loader(ds, bs, train=False, device=device, seed=c.seed, fast=c.fast_data, num_workers=c.num_workers))
    K = r.train_set.num_classes
    evaluate(r.eval_model, Window(it, 1), ds.targets[:bs], K, r.groups, c.amp, c.channels_last)
    w = Window(it, ns.eval_batches, stop_at, shift=bs)
    _sync(device)
    t = time.perf_counter()
    try: evaluate(r.eval_model, w, ds.targets[bs:], K, r.groups, c.amp, c.channels_last)
    except RuntimeError:                # stopped by the deadline: evaluate saw fewer images than it was given
        if w.done == ns.eval_batches: raise
    finally: it.close()
    _sync(device)
    dt = time.perf_counter() - t
    if not w.done: return dict(eval_status='not measured (deadline before the first timed batch)')
    n = w.done * bs
    return dict(eval_status='measured' if w.done == ns.eval_batches else f'cut short ({w.done} of {ns.eval_batches} batches)',
                eval_images_timed=n, eval_s_per_image=dt / n, eval_images_per_s=n / dt, eval_batch_size=bs)

def measure(m: Measurement, root, device, ns, stop_at) -> dict:
    "One measurement: build the run as `train` does, then its step, loader-start and evaluation timings."
    import torch
    from ltpaper.config import TrainConfig
    from ltpaper.losses import build_loss
    from ltpaper.train.step import TrainStep
    from ltpaper.train import Run
    t = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix='paper_cost_run_'))
    try:
        c = TrainConfig(**dict(_run_config(m, root, str(device), ns), out_dir=str(work)))
        r = Run(c, device)
        dev = r.device
        counts = real_counts(m.dataset, m.imbalance_factor)
        if len(counts) != r.train_set.num_classes:
            raise ValueError(f'{m.dataset}: the files hold {r.train_set.num_classes} classes, the real set {len(counts)}')
        r.loss_fn = build_loss(c.loss, counts, **c.loss_params).to(dev)    # the real long tail's counts (the pools are balanced)
        r.set_progress = getattr(r.loss_fn, 'set_progress', None)
        r.fast = None if c.step == 'eager' else TrainStep(r.model, r.loss_fn, r.opt, c.grad_clip, c.amp, c.channels_last,
                                                          r.train_loader.batch_size, c.step)
        setup = time.perf_counter() - t
        out = dict(batch_size=c.batch_size, eval_batch_size=c.eval_batch_size, model=c.model, amp=c.amp, channels_last=c.channels_last,
                   num_workers=c.num_workers, step=c.step, measured_imbalance_factor=c.imbalance_factor,
                   train_images_in_files=len(r.train_set), test_images_in_files=len(r.test_set),
                   data_path='device tensor (fast)' if r.train_loader.fast else f'files, per-image torchvision, {c.num_workers} worker(s)',
                   setup_s=round(setup, 2), train_start_s=first_batch_s(r.train_loader), eval_start_s=first_batch_s(r.test_loader))
        out.update(_train_steps(r, dev, ns, stop_at))
        if out['status'] != 'not measured': out.update(_eval_pass(r, dev, ns, stop_at))
        out.setdefault('eval_s_per_image', None)        # no evaluation time: its rows stay missing
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
        r = None
        gc.collect()
        if device.type == 'cuda': torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- run, report
def device_label(device) -> tuple[str, str]:
    "(name for files, words for titles) of the device: the GPU's name, or the CPU with its cores."
    import torch
    if device.type == 'cuda':
        g = torch.cuda.get_device_name(device)
        return g.replace(' ', '_'), f'GPU: {g}'
    model = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')), '') \
        if Path('/proc/cpuinfo').is_file() else platform.processor()
    name = f'cpu{os.cpu_count()}-{platform.machine()}'
    return name, f'CPU TRIAL on {name} ({model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)): not a GPU measurement'

def summarize(rows, meas, results) -> tuple[dict, dict, dict]:
    "(seconds per epoch of each row, per-dataset summary, per-table projection) from the measurements' results."
    s_epoch = {f'{r.table}/{r.row}': epoch_seconds(r, results.get(r.key)) for r in rows}
    per_ds = {}
    for m in meas:
        res = results.get(m.key, {})
        ds_rows = [r for r in rows if r.key == m.key and r.own]
        ifs = sorted({r.imbalance_factor for r in ds_rows}, reverse=True)
        per_ds.setdefault(m.dataset, {})[m.family] = dict(
            status=res.get('status', 'not measured'), images_per_s=res.get('images_per_s'),
            s_per_epoch={str(f): next((s_epoch[f'{r.table}/{r.row}'] for r in ds_rows if r.imbalance_factor == f), None) for f in ifs},
            epochs=sorted({r.epochs for r in ds_rows}), runs=sum(r.seeds for r in ds_rows), rows=len(ds_rows))
    return s_epoch, per_ds, project(rows, s_epoch)

def _h(x): return 'not measured' if x is None else f'{x:,.1f}'

def reuse_groups(rows) -> dict:
    "{note: number of rows} of the rows (dicts) that another loss's measurement times."
    out = {}
    for r in rows:
        if r['own'] and r['note']: out[r['note']] = out.get(r['note'], 0) + 1
    return out

def markdown(doc) -> str:
    "The summary as Markdown: measurements, per-dataset seconds per epoch, per-table hours."
    unit = 'GPU-hours' if doc['device_kind'] == 'cuda' else 'CPU-hours of this machine'
    md = [f"## What the paper costs: {doc['device_words']}", '',
          f"`paper` profiles, step `{doc['step']}`, {doc['steps']} timed steps after {doc['warmup']} warm-up steps per measurement"
          f"{', batch overridden to ' + str(doc['trial_batch']) + ' (a trial, not the paper profile)' if doc['trial_batch'] else ''}; "
          f"torch {doc['torch']}, {doc['date']}, {doc['wall_s']:.0f} s in all.", '',
          '| measurement | timed with | status | data path | batch | ms/step | images/s | loader start s | eval images/s | rows it times |',
          '|---|---|---|---|---|---|---|---|---|---|']
    for m in doc['measurements']:
        r = m['result']
        f = lambda k, fmt, x=1: fmt.format(x * r[k]) if r.get(k) is not None else ''
        why = f"{r.get('status', 'not measured')}{': ' + r['why'] if r.get('why') else ''}"
        why += ' (kept from an earlier call)' if r.get('reused_from') else ''
        md.append(f"| {m['key']} | {m['from_row']} ({m['loss']}) | {why} | {r.get('data_path', '')} | {r.get('batch_size', '')} | "
                  f"{f('s_per_step', '{:.1f}', 1e3)} | {f('images_per_s', '{:,.0f}')} | {f('train_start_s', '{:.2f}')} | "
                  f"{f('eval_images_per_s', '{:,.0f}')} | {len(m['rows'])} |")
    md += ['', '| dataset | family | images/s | s/epoch by IF | epochs | runs |', '|---|---|---|---|---|---|']
    for ds, fams in doc['datasets'].items():
        for fam, v in fams.items():
            se = ', '.join(f"IF {k}: {_h(s)}" for k, s in v['s_per_epoch'].items())
            md.append(f"| {ds} | {fam} | {_h(v['images_per_s'])} | {se} | {'/'.join(map(str, v['epochs']))} | {v['runs']} |")
    md += ['', f'| table | rows | own runs | projected {unit} | measured rows: {unit} | rows not measured |', '|---|---|---|---|---|---|']
    for t, v in doc['tables'].items():
        if t == 'all': continue
        md.append(f"| {t} | {v['rows']} | {v['runs']} | {_h(v['hours'])} | {v['measured_rows']} rows: {_h(v['measured_rows_hours'])} | "
                  f"{len(v['missing_rows'])} |")
    a = doc['tables']['all']
    md.append(f"| all | | | {_h(a['hours'])} | {_h(a['measured_rows_hours'])} | |")
    shared = [s for v in doc['tables'].values() for s in v.get('shared_rows', [])]
    md += ['', 'Rows that are other rows\' runs (no extra cost): ' + (', '.join(shared) if shared else 'none') + '.', '',
           'Rows timed by another loss\'s measurement: ' + ('; '.join(f'{note}: {n} rows' for note, n in reuse_groups(doc['rows']).items())
                                                            or 'none') + '.', '']
    return '\n'.join(md)

def dry_run(ns):
    "The plan: the cells, the distinct measurements in their order, the steps; nothing runs."
    rows, meas = make_plan(ns.tables, ns.families, ns.only)
    print(f"tables {', '.join(ns.tables)}: {len(rows)} rows ({sum(r.own for r in rows)} with runs of their own), "
          f"{sum(r.seeds for r in rows if r.own)} runs, step {ns.step}, {ns.steps} timed steps after {ns.warmup} warm-up steps, "
          f"evaluation {ns.eval_batches} batches, deadline {ns.deadline_s:.0f} s")
    for m in meas:
        print(f"measure {m.key:<28} {m.loss:<8} from {m.from_row:<40} model={m.train['model']} batch={m.train['batch_size']} "
              f"workers={m.train['num_workers']} amp={m.train['amp']}  times {len(m.rows)} rows")
    keys = {m.key for m in meas}
    for r in rows:
        if not r.own: print(f"shared  {r.table}/{r.row}: {r.note} (no extra cost)")
    skipped = [f'{r.table}/{r.row}' for r in rows if r.own and r.key not in keys]
    if skipped: print(f"not measured (--only): {len(skipped)} rows, e.g. {', '.join(skipped[:3])}")
    for note, n in reuse_groups([asdict(r) for r in rows if r.key in keys]).items(): print(f"reuse   {note}: {n} rows")
    cells = sorted({(r.dataset, r.imbalance_factor) for r in rows})
    batch = {r.dataset: r.batch_size for r in rows}
    print('cells (dataset, IF -> real train images, steps/epoch): ' + '; '.join(
        f"{d} {f:g} -> {real_train_size(d, f):,}, {steps_per_epoch(real_train_size(d, f), batch[d])}" for d, f in cells))
    return rows, meas

def earlier(path, device_name, step) -> dict:
    "The measurements of an earlier call's paper_cost.json (file or folder) on the same device and step mode: {key: result}."
    if not path: return {}
    f = Path(path)/'paper_cost.json' if Path(path).is_dir() else Path(path)
    doc = json.loads(f.read_text())
    if (doc['device'], doc['step'], doc.get('trial_batch')) != (device_name, step, None):
        sys.exit(f"paper_cost.py: {f} was measured on {doc['device']} with step {doc['step']}"
                 f"{' and batch ' + str(doc['trial_batch']) if doc.get('trial_batch') else ''}; this call: {device_name}, {step}; "
                 "measurements of different set-ups are never mixed")
    return {m['key']: dict(m['result'], reused_from=f"{f} ({doc['date']})") for m in doc['measurements']
            if m['result'].get('status') in ('measured', 'cut short')}

def run(ns) -> dict:
    import torch
    t0, stop_at = time.perf_counter(), time.monotonic() + ns.deadline_s
    if ns.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('paper_cost.py: no CUDA device visible; run it on a GPU machine, or pass --device cpu for a CPU trial (labelled as one)')
    if ns.threads: torch.set_num_threads(ns.threads)
    device = torch.device(ns.device)
    name, words = device_label(device)
    out = Path(ns.out) if ns.out else ROOT/'benchmarks'/'results'/f'paper_cost_{name}'
    rows, meas = make_plan(ns.tables, ns.families, ns.only)
    if ns.reuse and ns.trial_batch: sys.exit('paper_cost.py: --reuse keeps measurements of the paper profiles, not of a --trial-batch')
    kept = earlier(ns.reuse, name, ns.step)
    data_root = Path(ns.data_dir) if ns.data_dir else Path(tempfile.mkdtemp(prefix='paper_cost_data_'))
    data, results = {}, {}
    try:
        for m in meas:
            if m.key in kept:
                results[m.key] = kept[m.key]
                continue
            left = stop_at - time.monotonic()
            if left <= 0:
                results[m.key] = dict(status='not measured', why='deadline before it started')
                continue
            try:
                if m.dataset not in data: data[m.dataset] = write_dataset(m.dataset, data_root, ns)
                print(f'measuring {m.key} ({m.from_row}), {left:.0f} s left', file=sys.stderr, flush=True)
                results[m.key] = measure(m, data_root, device, ns, stop_at)
            except Exception as e:          # one failing measurement must not lose the others
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
                results[m.key] = dict(status='not measured', why=f'{type(e).__name__}: {first}')
            print(f"  {m.key}: {results[m.key].get('status')} {results[m.key].get('why', '')}", file=sys.stderr, flush=True)
    finally:
        if not ns.data_dir: shutil.rmtree(data_root, ignore_errors=True)
    s_epoch, per_ds, tables = summarize(rows, meas, results)
    doc = dict(benchmark='paper_cost', device=name, device_kind=device.type, device_words=words, hostname=socket.gethostname(),
               torch=torch.__version__, python=platform.python_version(), commit=ns.commit, date=time.strftime('%Y-%m-%d %H:%M'),
               step=ns.step, steps=ns.steps, warmup=ns.warmup, eval_batches=ns.eval_batches, deadline_s=ns.deadline_s,
               trial_batch=ns.trial_batch, tables_asked=list(ns.tables), families=list(ns.families), data=data,
               measurements=[dict(key=m.key, dataset=m.dataset, family=m.family, loss=m.loss, from_row=m.from_row, rows=m.rows,
                                  result=results.get(m.key, {})) for m in meas],
               rows=[dict(asdict(r), s_per_epoch=s_epoch[f'{r.table}/{r.row}']) for r in rows],
               datasets=per_ds, tables=tables, wall_s=round(time.perf_counter() - t0, 1))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out/'paper_cost.json.tmp'
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out/'paper_cost.json')
    md = markdown(doc)
    (out/'paper_cost.md').write_text(md)
    print(md)
    print(f'wrote {out}/paper_cost.json and paper_cost.md')
    return doc

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tables', default=','.join(TABLES), help='comma-separated table configs (configs/<name>.yaml)')
    ap.add_argument('--device', default='cuda', choices=['cuda', 'cpu'], help='cuda (the default: a GPU number) or cpu (a trial)')
    ap.add_argument('--steps', type=int, default=200, help='timed training steps per measurement')
    ap.add_argument('--warmup', type=int, default=10,
                    help='untimed steps first (cuDNN autotuning, compilation, workers; >= 3 when compiled)')
    ap.add_argument('--min-steps', type=int, default=10, help='a measurement cut by the deadline keeps its timing from this many steps')
    ap.add_argument('--eval-batches', type=int, default=10, help='timed evaluation batches per measurement (after one warm-up batch)')
    ap.add_argument('--eval-images', type=int, default=0,
                    help='>0: cap the CIFAR test sets built (a CPU trial); times scale to the real size')
    ap.add_argument('--step', default='eager', choices=['eager', 'compiled', 'aot_eager'],
                    help="TrainConfig.step: eager (what `ltpaper reproduce --profile paper` runs), compiled (nbs/train/05_step.ipynb) "
                         "or aot_eager (a CPU check of that path)")
    ap.add_argument('--families', default=','.join(FAMILIES),
                    help=f'loss families measured apart (others: softmax\'s); of {",".join(FAMILIES)}')
    ap.add_argument('--only', default=None, help="comma-separated globs of measurements 'dataset:family' to run (e.g. 'cifar10_lt:*')")
    ap.add_argument('--deadline-s', type=float, default=420, help='stop measuring after this many seconds from the start')
    ap.add_argument('--workers', type=int, default=None,
                    help="DataLoader workers of the file-based sets (default: the profile's, at most the cores)")
    ap.add_argument('--write-workers', type=int, default=min(16, os.cpu_count() or 1), help='processes writing the JPEGs')
    ap.add_argument('--tiny-per-class', type=int, default=50, help='Tiny-ImageNet train JPEGs per class (the real set has 500)')
    ap.add_argument('--jpeg-train', type=int, default=2048,
                    help='ImageNet / iNaturalist train JPEGs in the pool (at least one per class for ImageNet)')
    ap.add_argument('--jpeg-test', type=int, default=1024, help='ImageNet / iNaturalist test JPEGs in the pool')
    ap.add_argument('--trial-batch', type=int, default=None, help='override batch sizes (a CPU trial of ResNet-50: NOT the paper profile)')
    ap.add_argument('--threads', type=int, default=0, help='>0: torch.set_num_threads')
    ap.add_argument('--data-dir', default=None, help='write the files here and keep them (default: a temporary folder, removed)')
    ap.add_argument('--out', default=None, help='output folder (default benchmarks/results/paper_cost_<device>/)')
    ap.add_argument('--reuse', metavar='DIR', default=None,
                    help="an earlier call's output (same device and --step): keep its measurements, measure only the rest")
    ap.add_argument('--commit', default=None, help='the git commit of this tree, recorded in the output (a device copy has no .git)')
    ap.add_argument('--dry-run', action='store_true', help='print the plan and run nothing')
    ns = ap.parse_args(argv)
    ns.tables = [t for t in ns.tables.split(',') if t]
    ns.families = [f for f in ns.families.split(',') if f]
    bad = [f for f in ns.families if f not in FAMILIES]
    if bad or 'softmax' not in ns.families:
        ap.error(f'--families: {bad or "softmax is needed"}; choose from {",".join(FAMILIES)} (softmax always)')
    ns.only = [g for g in ns.only.split(',') if g] if ns.only else None
    if ns.steps < 1 or ns.warmup < 0 or ns.eval_batches < 1: ap.error('--steps and --eval-batches must be >= 1, --warmup >= 0')
    ns.min_steps = min(ns.min_steps, ns.steps)
    if ns.step != 'eager' and ns.warmup < 3:     # the compiled step of `ours` compiles twice: its estimator's overflow buffer
        ns.warmup = 3                            # changes shape after the first step (TORCH_LOGS=recompiles, measured here)
        print('paper_cost.py: --warmup raised to 3 for a compiled step (the second step of `ours` recompiles)', file=sys.stderr)
    return ns

if __name__ == '__main__':
    ns = parse_args()
    if ns.dry_run: dry_run(ns)
    else: run(ns)
