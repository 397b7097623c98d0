"""Tests for ltpaper.pipeline.reproduce: config expansion for every table and profile, hashing, bad CLI arguments, and the
smoke profile end to end through papermill (real Fashion-MNIST; tiny CIFAR-10 / Tiny-ImageNet / ImageNet-LT /
iNaturalist files written here in their real formats): skipping finished runs, failure isolation, corrupt
metrics, --gpus workers, the submitit launcher, and every paper notebook rendered into a tmp results root."""
import json, re, os, pickle, subprocess, sys, time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

import ltpaper.cli as CLI
import ltpaper.pipeline.launch as L
import ltpaper.pipeline.reproduce as R
import ltpaper.pipeline.runs as RUNS
import ltpaper.pipeline.tables as T
from ltpaper.cli import cli_reproduce, cli_status
from ltpaper.config import RUN_CONTROL_FIELDS as HASH_EXCLUDE, TrainConfig, config_hash
from ltpaper.losses import loss_hparams
from ltpaper.pipeline.report import open_results, summarize, write_table
from ltpaper.pipeline.runs import fake_metrics, job_state, plan_jobs, run_job
from ltpaper.settings import PROFILES
from ltpaper.pipeline.tables import expand_table, list_tables, load_table

from helpers import cli

FMNIST = Path('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz')
ROWS = dict(table1=108, table2=14, table2_oltr=7, table3=8, fmnist_lt=50)


# ---------------------------------------------------------------- tiny datasets in their real formats
def _jpeg(path, seed, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, 'JPEG')

def write_cifar10(root, per_class=20, test_per_class=4):
    "torchvision's pickled CIFAR-10 batches: cifar-10-batches-py/data_batch_1..5 and test_batch."
    rng = np.random.default_rng(0)
    d = root/'cifar-10-batches-py'; d.mkdir(parents=True)
    y = rng.permutation(np.repeat(np.arange(10), per_class))
    x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
    for i, xs, ys in zip(range(1, 6), np.array_split(x, 5), np.array_split(y, 5)):
        (d/f'data_batch_{i}').write_bytes(pickle.dumps({b'data': xs, b'labels': ys.tolist()}))
    yt = np.repeat(np.arange(10), test_per_class)
    (d/'test_batch').write_bytes(pickle.dumps({b'data': rng.integers(0, 256, (len(yt), 3072), dtype=np.uint8), b'labels': yt.tolist()}))

def write_tiny(root, classes=4, per_class=10, val_per_class=3):
    "tiny-imagenet-200/: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG + val/val_annotations.txt."
    base = root/'tiny-imagenet-200'; base.mkdir(parents=True)
    wnids = [f'n0{c}000000' for c in range(classes)]
    (base/'wnids.txt').write_text('\n'.join(wnids) + '\n')
    ann = []
    for c, w in enumerate(wnids):
        for k in range(per_class): _jpeg(base/'train'/w/'images'/f'{w}_{k}.JPEG', 100 * c + k, 64)
        for k in range(val_per_class):
            _jpeg(base/'val'/'images'/f'val_{c}_{k}.JPEG', 10_000 + 100 * c + k, 64)
            ann.append(f'val_{c}_{k}.JPEG\t{w}\t0\t0\t63\t63')
    (base/'val'/'val_annotations.txt').write_text('\n'.join(ann) + '\n')

# images per class in the ImageNet train folder: enough for the exponential IF-100 subset (imagenet_lt_if100, n_max =
# the largest class, 300) to keep one image of the rarest class; the OLTR split files list the first `counts` of them
FOLDER = (300, 150, 100, 80, 60, 40, 40, 40)

def write_imagenet_lt(root, counts=(9, 7, 6, 5, 4, 3, 2, 2)):
    "ImageNet in ROOT/imagenet/{train,val}/<wnid>/ plus the OLTR split files ROOT/ImageNet_LT/ImageNet_LT_{train,val,test}.txt."
    lines = {'train': [], 'val': [], 'test': []}
    for c, n in enumerate(counts):
        w = f'n0{c}440764'
        for k in range(max(n + 1, FOLDER[c])): _jpeg(root/'imagenet'/'train'/w/f'{w}_{k}.JPEG', 20_000 + 1000 * c + k)
        for k in range(3): _jpeg(root/'imagenet'/'val'/w/f'ILSVRC2012_val_{c}{k}.JPEG', 30_000 + 100 * c + k)
        lines['train'] += [f'train/{w}/{w}_{k}.JPEG {c}' for k in range(n)]
        lines['val'] += [f'train/{w}/{w}_{n}.JPEG {c}']
        lines['test'] += [f'val/{w}/ILSVRC2012_val_{c}{k}.JPEG {c}' for k in range(3)]
    (root/'ImageNet_LT').mkdir()
    for s, l in lines.items(): (root/'ImageNet_LT'/f'ImageNet_LT_{s}.txt').write_text('\n'.join(l) + '\n')

def write_inat(root, counts=(8, 6, 4, 3, 2, 2, 1, 1)):
    "ROOT/inaturalist2017/{train2017,val2017}.json (COCO style) with the images they name."
    base = root/'inaturalist2017'
    cats = [{'id': 100 + c, 'name': f'species{c}'} for c in range(len(counts))]
    for name, per in (('train2017.json', counts), ('val2017.json', [2] * len(counts))):
        images, anns = [], []
        for c, n in enumerate(per):
            for k in range(n):
                i = len(images)
                fn = f'train_val_images/Aves/{100 + c}/{name[:3]}{i}.jpg'
                _jpeg(base/fn, 40_000 + 1000 * c + i)
                images.append({'id': 5000 + i, 'file_name': fn}); anns.append({'id': i, 'image_id': 5000 + i, 'category_id': 100 + c})
        (base/name).write_text(json.dumps({'images': images, 'annotations': anns, 'categories': cats}))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    "Tiny Tiny-ImageNet / ImageNet-LT / iNaturalist files; LTPAPER_DATA_ROOT points there (Fashion-MNIST: Debian's files)."
    root = tmp_path_factory.mktemp('data')
    write_tiny(root); write_imagenet_lt(root); write_inat(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('LTPAPER_DATA_ROOT', str(root))
        yield root

@pytest.fixture(scope='module')
def shared_root(tmp_path_factory):
    "One results root for the Table 2 and Table 3 runs (Table 3 reuses Table 2's Softmax run)."
    return tmp_path_factory.mktemp('results23')

def _executed_env(path):
    "The CUDA_VISIBLE_DEVICES an executed experiment notebook printed, and its papermill start/end times."
    nb = nbformat.read(path, as_version=4)
    text = ''.join(o.get('text', '') for c in nb.cells for o in c.get('outputs', []))
    cvd = text.split('CUDA_VISIBLE_DEVICES=')[1].split()[0]
    pm = nb.metadata.papermill
    return cvd, pm.start_time, pm.end_time


# ---------------------------------------------------------------- configs, expansion, hashing
CORE_PROFILES = ('smoke', 'cpu', 'paper')           # every table has these; mid/long are budgets of fmnist_lt only

@pytest.mark.parametrize('table', sorted(ROWS))
@pytest.mark.parametrize('profile', CORE_PROFILES)
def test_every_table_and_profile_expands_to_valid_train_configs(table, profile):
    rows = expand_table(table, profile)    # validates every row with TrainConfig (names, ranges, a trial loss build)
    assert len(rows) == ROWS[table]
    names = [r.name for r in rows]
    assert len(set(names)) == len(names) and all(T._SLUG.fullmatch(n) for n in names)
    for r in rows:
        c = TrainConfig.from_dict(r.train)
        assert (c.dataset, c.loss) == (r.dataset, load_table(table)['methods'][r.method]['loss'])
        assert set(r.train) == {f for f in TrainConfig.__dataclass_fields__}   # the full TrainConfig, nothing implicit
        assert r.train['keep_checkpoint'] is False
    spec = load_table(table)
    for r in rows:
        if profile == 'smoke': assert r.train['epochs'] == 1 and r.train['model'] == 'small_resnet' and r.train['limit_train'] > 0
        if profile == 'paper': assert r.train['model'] == ('resnet50' if table.startswith(('table2', 'table3')) else 'resnet32')
        if r.method.startswith('ours') and r.train['loss'] != 'ours_tuned' and 'use_intra' in loss_hparams(r.train['loss']):
            # the Table 3 switches are explicit in every ours-row whose loss has them (the prototype has neither)
            assert {'use_margin', 'use_intra'} <= set(r.train['loss_params'])
    assert set(CORE_PROFILES) <= set(spec['profiles']) <= set(PROFILES)


def test_table_specific_settings():
    t1 = {r.name: r.train for r in expand_table('table1', 'paper')}
    for name, c in t1.items():
        assert (c['epochs'], c['lr'], c['momentum'], c['weight_decay'], c['batch_size'], c['warmup_epochs'], c['milestones'],
                c['lr_decay'], c['grad_clip'], c['val_per_class']) == (200, 0.1, 0.9, 2e-4, 128, 5, [160, 180], [0.01, 0.0001], 2.0, 0), name
        bins = c['loss_params'].get('bins')
        assert bins == (30 if name.startswith('tinyimagenet_lt-') and c['loss'] in ('ghm', 'ours', 'ours_tuned') else None), name
    assert {(c['dataset'], c['imbalance_factor']) for c in t1.values()} == {(d, f) for d in ('cifar10_lt', 'cifar100_lt', 'tinyimagenet_lt') for f in (500, 100, 10, 1)}
    t2 = {r.name: r for r in expand_table('table2', 'paper')}
    assert {r.dataset for r in t2.values()} == {'imagenet_lt_if100', 'inaturalist2017'} and all(r.train['amp'] for r in t2.values())
    assert {r.imbalance_factor for r in t2.values() if r.dataset == 'imagenet_lt_if100'} == {100}   # the poster's IF 100
    assert {(r.dataset, r.imbalance_factor) for r in expand_table('table2_oltr', 'paper')} == {('imagenet_lt', 256)}
    t3 = {r.method: r for r in expand_table('table3', 'paper')}
    flags = {m: (r.train['loss'], r.train['loss_params'].get('use_margin'), r.train['loss_params'].get('use_intra'), r.train['loss_params'].get('binning'))
             for m, r in t3.items()}
    assert flags == {'softmax': ('softmax', None, None, None), 'ours_R': ('ours', True, False, None), 'ours_A_U': ('ours', False, True, 'ura'),
                     'ours_R_A_U': ('ours', True, True, 'ura'), 'ours_R_A_AU': ('ours', True, True, 'aura'),
                     'seesaw': ('seesaw', None, None, None), 'ours_R_cum': ('ours_study', True, False, None),
                     'ours_tuned': ('ours_tuned', None, None, None)}
    assert {r.dataset for r in t3.values()} == {'imagenet_lt_if100'}
    assert (t3['softmax'].run_table, t3['softmax'].run_row) == ('table2', 'imagenet_lt_if100-softmax')
    assert (t3['ours_R_A_AU'].run_table, t3['ours_R_A_AU'].run_row) == ('table2', 'imagenet_lt_if100-ours')
    assert (t3['seesaw'].run_table, t3['seesaw'].run_row) == ('table2', 'imagenet_lt_if100-seesaw')   # the paper's R, by its numbers
    fm = {r.name: r.train for r in expand_table('fmnist_lt', 'cpu')}
    assert all(c['val_per_class'] == 300 and c['model'] == 'small_resnet' for c in fm.values())
    assert {n for n in fm if not n.endswith(('-if500', '-if10', '-if1'))} == {f'{m}-if100' for m in
            ('softmax', 'class_balanced', 'focal', 'ghm', 'effective_number', 'equalization', 'seesaw', 'ours', 'ours_tuned', 'ours_r',
             'ours_a_u', 'ours_r_a_u', 'ours_r_dens', 'ours_prototype', 'ours_ghmc', 'ours_global')}
    assert len({fm[f'softmax-if{f}']['epochs'] for f in (500, 100, 10, 1)}) > 1          # the per-IF epochs of the cpu profile
    assert len(plan_jobs("fmnist_lt", "cpu")) == 150                                      # 50 rows x the config's 3 seeds
    assert len(plan_jobs("fmnist_lt", "long")) == 57 and len(plan_jobs("fmnist_lt", "mid")) == 24   # the budget profiles' rows
    assert {'fmnist_lt', 'table1', 'table2', 'table3'} <= set(list_tables())
    assert all(RUNS.paper_notebook(t).is_file() for t in ROWS)


def test_every_config_in_configs_expands():
    "Every YAML in configs/ (also those other issues add, e.g. study.yaml) expands for each of its profiles."
    for t in list_tables():
        for p in load_table(t)['profiles']:
            assert expand_table(t, p), (t, p)


def test_configs_root_setting_and_a_table_without_paper_notebook(tmp_path, monkeypatch):
    cfg = tmp_path/'configs'; cfg.mkdir()
    (cfg/'mytable.yaml').write_text((T.project_root()/'configs'/'fmnist_lt.yaml').read_text().replace('table: fmnist_lt', 'table: mytable'))
    monkeypatch.setenv('LTPAPER_CONFIGS_ROOT', str(cfg))
    assert list_tables() == ['mytable']
    code, out, err = cli(cli_reproduce, ['mytable', '--profile', 'smoke', '--results-root', str(tmp_path/'r')])
    assert code == 2 and 'needs its paper notebook' in err and err.count('\n') == 1
    code, out, err = cli(cli_reproduce, ['mytable', '--profile', 'smoke', '--no-render', '--dry-run', '--rows', 'ours-if100', '--seeds', '0',
                                         '--results-root', str(tmp_path/'r')])
    assert code == 0 and out.startswith('run  mytable/ours-if100 seed0 [missing]') and not (tmp_path/'r').exists()


def test_config_hash():
    c = dict(expand_table('fmnist_lt', 'smoke')[0].train, seed=0)
    h = config_hash(c)
    assert len(h) == 16 and int(h, 16) >= 0
    assert config_hash(dict(sorted(c.items(), reverse=True))) == h
    assert config_hash({**c, **{k: 'elsewhere' for k in HASH_EXCLUDE}}) == h             # where/how fast, not what
    assert config_hash(json.loads(json.dumps({**c, 'imbalance_factor': float(c['imbalance_factor']), 'epochs': 1.0}))) == h   # 500 == 500.0
    from dataclasses import asdict
    assert config_hash(asdict(TrainConfig.from_dict(c))) == h     # what metrics.json records hashes the same
    for k, v in (('seed', 1), ('lr', 0.5), ('epochs', 2), ('loss_params', {'bins': 5}), ('imbalance_factor', 10)):
        assert config_hash({**c, k: v}) != h, k
    # profiles differ -> different hashes for the same row and seed
    assert plan_jobs('fmnist_lt', 'smoke', rows='ours-if100', seeds=[0])[0].config_hash != plan_jobs('fmnist_lt', 'cpu', rows='ours-if100', seeds=[0])[0].config_hash


# ---------------------------------------------------------------- bad arguments: one line, exit 2, nothing run
BAD = [(['table9'], "unknown table 'table9'"),
       (['fmnist_lt', '--profile', 'huge'], "--profile 'huge'"),
       (['fmnist_lt', '--seeds', '0,one'], "--seeds '0,one'"),
       (['fmnist_lt', '--seeds', '1.5'], "--seeds '1.5'"),
       (['fmnist_lt', '--seeds', '0,0'], 'repeats a seed'),
       (['fmnist_lt', '--rows', 'resnet*'], "--rows 'resnet*' matches no row"),
       (['fmnist_lt', '--gpus', '0,3'], 'GPU index 3 does not exist'),
       (['fmnist_lt', '--gpus', 'x'], "--gpus 'x'"),
       (['fmnist_lt', '--device', 'tpu'], "invalid choice: 'tpu'"),
       (['fmnist_lt', '--launcher', 'lsf'], "invalid choice: 'lsf'"),
       (['fmnist_lt', '--bogus'], 'unrecognized arguments: --bogus'),
       ([], 'the following arguments are required: table')]

@pytest.mark.parametrize('argv,msg', BAD)
def test_bad_reproduce_arguments(argv, msg, tmp_path, monkeypatch):
    monkeypatch.setattr(CLI, '_device_count', lambda: 2)
    monkeypatch.setattr(R, 'execute_jobs', lambda *a, **k: pytest.fail('nothing may run on bad arguments'))
    code, out, err = cli(cli_reproduce, argv + ['--results-root', str(tmp_path/'r')])
    assert code == 2 and msg in err and err.count('\n') == 1 and err.startswith('ltpaper reproduce: error: '), err
    assert not (tmp_path/'r').exists()

@pytest.mark.parametrize('argv,msg', [(['table9'], 'unknown table'), (['table1', '--profile', 'x'], "--profile 'x'"),
                                      (['table1', '--seeds', 'a'], "--seeds 'a'"), (['table1', '--rows', 'zz*'], 'matches no row')])
def test_bad_status_arguments(argv, msg):
    code, out, err = cli(cli_status, argv)
    assert code == 2 and msg in err and err.count('\n') == 1 and err.startswith('ltpaper status: error: '), err

def test_bad_arguments_from_a_fresh_interpreter(tmp_path):
    "The real process: exit code 2, one stderr line, nothing on stdout, nothing written."
    code = 'import sys; from ltpaper.cli import cli_reproduce; sys.exit(cli_reproduce(sys.argv[1:]))'
    p = subprocess.run([sys.executable, '-c', code, 'table1', '--rows', 'nope', '--results-root', str(tmp_path)], capture_output=True,
                       text=True, cwd=T.project_root(), env={**os.environ, 'PYTHONPATH': str(T.project_root())})
    assert p.returncode == 2 and 'matches no row' in p.stderr and p.stderr.count('\n') == 1 and p.stdout == '', p.stderr
    assert list(tmp_path.iterdir()) == []

def test_cuda_without_a_gpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(CLI, '_device_count', lambda: 0)
    code, out, err = cli(cli_reproduce, ['fmnist_lt', '--device', 'cuda', '--results-root', str(tmp_path)])
    assert code == 2 and 'no CUDA device is visible' in err and err.count('\n') == 1 and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- runner logic without kernels
def test_skip_force_stale_and_corrupt_without_training(tmp_path, monkeypatch):
    "The scheduling logic with a stand-in for the notebook run: done runs skip, --force reruns, stale/corrupt rerun."
    ran = []
    def fake_run(job, **kw):
        ran.append(job.row); fake_metrics(job)
        return dict(table=job.table, row=job.row, seed=job.seed, state='done', executed=job.executed)
    monkeypatch.setattr(L, 'run_job', fake_run)
    args = ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100,ours-if100', '--seeds', '0,1', '--no-render', '--results-root', str(tmp_path)]
    assert cli(cli_reproduce, args)[0] == 0 and sorted(ran) == ['ours-if100'] * 2 + ['softmax-if100'] * 2
    ran.clear()
    code, out, _ = cli(cli_reproduce, args)
    assert code == 0 and ran == [] and '4 already done, 0 to run' in out
    assert cli(cli_reproduce, args + ['--force'])[0] == 0 and len(ran) == 4
    ran.clear()
    m = tmp_path/'smoke'/'runs'/'fmnist_lt'/'ours-if100'/'seed1'/'metrics.json'
    m.write_text(m.read_text()[:100])                                   # truncated
    code, out, _ = cli(cli_status, args[:7] + ['--results-root', str(tmp_path)])
    assert f'corrupt     fmnist_lt/ours-if100' in out and str(m) in out and '3 done' in out, out
    code, out, _ = cli(cli_reproduce, args)
    assert ran == ['ours-if100'] and f'{m} is corrupt' in out and 'rerunning' in out
    ran.clear()
    cpu_job = plan_jobs('fmnist_lt', 'cpu', rows='softmax-if100', seeds=[0], results_root=tmp_path/'smoke')[0]   # cpu: the root itself
    assert job_state(cpu_job)[0] == 'stale'                             # same folder, made by the smoke profile
    code, out, _ = cli(cli_reproduce, ['fmnist_lt', '--rows', 'softmax-if100', '--seeds', '0', '--no-render', '--profile', 'cpu',
                                       '--results-root', str(tmp_path/'smoke')])
    assert ran == ['softmax-if100'] and 'was made with config' in out


def test_run_job_records_failures_and_guards_checkpoints(tmp_path, monkeypatch):
    "error.json on failure; a checkpoint of another config is removed before resuming, one of the same config kept."
    import papermill
    job = plan_jobs('fmnist_lt', 'smoke', rows='ours-if100', seeds=[0], results_root=tmp_path)[0]
    out = Path(job.out_dir); out.mkdir(parents=True)
    seen = {}
    def boom(nb, executed, **kw):
        seen['ckpt'] = (out/'checkpoint.pt').exists(); seen['params'] = kw['parameters']; seen['cwd'] = kw['cwd']
        Path(executed).write_text('{}')
        raise RuntimeError('kernel died')
    monkeypatch.setattr(papermill, 'execute_notebook', boom)
    (out/'checkpoint.pt').write_text('x'); (out/'pending.json').write_text(json.dumps({'resume_key': 'another'}))
    res = run_job(job)
    assert res['state'] == 'failed' and seen['ckpt'] is False and seen['cwd'] == job.out_dir
    err = json.loads((out/'error.json').read_text())
    assert err['error'] == 'RuntimeError: kernel died' and err['executed_notebook'] == job.executed and err['config_hash'] == job.config_hash
    assert job_state(job) == ('failed', f"RuntimeError: kernel died (notebook: {job.executed})")
    cfg = json.loads(seen['params']['config_json'])
    assert set(seen['params']) == {'config_json', 'out_dir'} and 'out_dir' not in cfg and cfg['resume'] is True
    assert config_hash(cfg) == job.config_hash
    (out/'checkpoint.pt').write_text('x')                              # pending.json now names this config: keep it
    run_job(job)
    assert seen['ckpt'] is True


def test_a_row_being_run_elsewhere_is_left_alone(tmp_path, monkeypatch):
    "A second run of a locked row fails at once naming the holder and touches nothing; a stale lock is taken over."
    import papermill, socket, subprocess
    job = plan_jobs('fmnist_lt', 'smoke', rows='ours-if100', seeds=[0], results_root=tmp_path)[0]
    out = Path(job.out_dir); out.mkdir(parents=True)
    calls = []
    monkeypatch.setattr(papermill, 'execute_notebook', lambda *a, **kw: calls.append(1) or (_ for _ in ()).throw(RuntimeError('ran')))
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])      # the other process, alive
    try:
        (out/'run.lock').write_text(json.dumps(dict(pid=holder.pid, host=socket.gethostname(), since='t0')))
        (out/'checkpoint.pt').write_text('its checkpoint'); (out/'pending.json').write_text(json.dumps({'resume_key': 'its'}))
        res = run_job(job)
        assert res['state'] == 'failed' and f'pid {holder.pid}' in res['error'] and 'being run by another ltpaper process' in res['error']
        assert not calls and not (out/'error.json').exists() and (out/'checkpoint.pt').read_text() == 'its checkpoint'
        st, detail = job_state(job)
        assert st == 'started' and f'running now: pid {holder.pid}' in detail
    finally:
        holder.kill(); holder.wait()
    res = run_job(job)                                   # its process is gone: the lock is stale, this run goes ahead
    assert calls == [1] and res['error'] == 'RuntimeError: ran' and not (out/'run.lock').exists()


def test_tables_from_metrics_files(tmp_path):
    "mean ± std over seeds, the paper's number and Δ, '—' for missing cells, orientation without Δ, the best variant."
    for j in plan_jobs('table1', 'smoke', rows='cifar10_lt-seesaw-if100', seeds=[0, 1, 2], results_root=tmp_path):
        fake_metrics(j, top1=70.0, class_counts=[50, 30, 20, 10, 8, 6, 4, 3, 2, 1], seed_noise=j.seed)
    res = open_results('table1', 'smoke', results_root=tmp_path)
    out = write_table(res, 'table1')
    s = out['summary'].set_index('row').loc['cifar10_lt-seesaw-if100']
    vals = [r['metrics']['last']['top1'] for r in res.runs]
    assert s.n == 3 and abs(s['mean'] - np.mean(vals)) < 1e-9 and abs(s['std'] - np.std(vals, ddof=1)) < 1e-9
    assert s.paper == 75.18 and abs(s['diff'] - (s['mean'] - 75.18)) < 1e-9
    t = out['table']
    assert t.loc[('Seesaw', 'reproduced'), ('CIFAR-10-LT', 'IF 100')] == f"{s['mean']:.2f} ± {s['std']:.2f}"
    assert t.loc[('Seesaw', 'Δ'), ('CIFAR-10-LT', 'IF 100')] == f"{s['diff']:+.2f}"
    assert (t.xs('reproduced', level=1) == '—').to_numpy().sum() == 107
    assert (t.xs('paper', level=1) == '—').to_numpy().sum() == 12 and (t.loc[('ours (tuned)', 'paper')] == '—').all()   # not the paper's
    md, tex, csv = (p.read_text() for p in out['paths'])
    assert 'last-epoch top-1' in md and '| Seesaw | reproduced |' in md and r'$\pm$' in tex and r'\begin{tabular}' in tex
    assert csv.splitlines()[0].startswith('view,dataset,imbalance_factor,method,label,row,metric,accuracy,n,mean,std')
    best = write_table(res, 'table1', accuracy='best')
    assert best['paths'][0].name == 'table1_best.md' and 'BEST-epoch' in best['paths'][0].read_text()
    assert best['summary'].set_index('row').loc['cifar10_lt-seesaw-if100', 'mean'] == s['mean'] + 1.0
    fm = summarize(open_results('fmnist_lt', 'smoke', results_root=tmp_path))
    paper_rows = fm[fm['method'] != 'ours_tuned']
    assert fm['n'].sum() == 0 and paper_rows['paper'].notna().all() and fm['diff'].isna().all()   # orientation only, never Δ


# ---------------------------------------------------------------- end to end through papermill (smoke profile)
@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_file(), reason='needs Debian dataset-fashion-mnist (make data installs it)')
def test_fmnist_smoke_end_to_end_and_rerun(tmp_path, data_root):
    rr = str(tmp_path)
    args = ['fmnist_lt', '--profile', 'smoke', '--rows', 'softmax-if100,ours-if100', '--seeds', '0', '--results-root', rr]
    code, out, err = cli(cli_reproduce, args)
    assert code == 0, out + err
    for row in ('softmax-if100', 'ours-if100'):
        m = json.loads((tmp_path/'smoke'/'runs'/'fmnist_lt'/row/'seed0'/'metrics.json').read_text())
        assert m['status'] == 'complete' and m['config']['dataset'] == 'fmnist_lt' and len(m['last']['per_class']) == 10
        assert not (tmp_path/'smoke'/'runs'/'fmnist_lt'/row/'seed0'/'checkpoint.pt').exists()       # keep_checkpoint: false
        nb = nbformat.read(tmp_path/'smoke'/'executed'/'fmnist_lt'/row/'seed0.ipynb', as_version=4)
        assert any(o.get('data', {}).get('image/png') for c in nb.cells for o in c.get('outputs', []))   # curves shown inline
    for stem in ('fmnist_lt', 'fmnist_lt_best', 'fmnist_lt_ablation', 'fmnist_lt_ablation_best'):
        for ext in ('md', 'tex', 'csv'): assert (tmp_path/'smoke'/'tables'/f'{stem}.{ext}').stat().st_size > 100
    for stem in ('per_class', 'groups', 'curves', 'margins'):
        for ext in ('png', 'pdf'): assert (tmp_path/'smoke'/'figures'/f'fmnist_lt_{stem}.{ext}').stat().st_size > 1000
    md = (tmp_path/'smoke'/'tables'/'fmnist_lt.md').read_text()
    assert 'orientation only' in md and 'Δ' not in md.split('\n\n')[1]
    assert (tmp_path/'smoke'/'executed'/'paper'/'fmnist_lt.ipynb').is_file()
    # rerun: nothing left to do
    code, out, _ = cli(cli_reproduce, args + ['--no-render'])
    assert code == 0 and '2 already done, 0 to run' in out
    code, out, _ = cli(cli_status, args[:-2] + ['--results-root', rr])
    assert code == 0 and '2 done' in out


@pytest.mark.slow
def test_table1_failing_row_does_not_stop_the_others(tmp_path, data_root):
    """CIFAR-10 missing: `ltpaper reproduce` refuses up front, naming it; `reproduce()` itself (a dataset that goes
    missing once runs have started) fails that row alone (error.json + executed notebook), Tiny-ImageNet still runs;
    then only CIFAR-10 reruns."""
    args = ['table1', '--profile', 'smoke', '--rows', 'cifar10_lt-softmax-if10,tinyimagenet_lt-ours-if10', '--seeds', '0', '--results-root', str(tmp_path)]
    code, out, err = cli(cli_reproduce, args + ['--no-render'])
    assert code == 2 and 'needs dataset cifar10_lt' in err and 'ltpaper fetch cifar10_lt' in err and not any(tmp_path.iterdir()), err
    res = R.reproduce('table1', 'smoke', 'cifar10_lt-softmax-if10,tinyimagenet_lt-ours-if10', [0], results_root=tmp_path,
                      render_outputs=False, progress=False, log=lambda *a: None)
    assert [f['row'] for f in res['failed']] == ['cifar10_lt-softmax-if10'] and [r['state'] for r in res['ran']].count('done') == 1
    e = json.loads((tmp_path/'smoke'/'runs'/'table1'/'cifar10_lt-softmax-if10'/'seed0'/'error.json').read_text())
    assert e['error'].startswith('FileNotFoundError') and 'cifar10_lt' in e['error'] and Path(e['executed_notebook']).is_file()
    m = json.loads((tmp_path/'smoke'/'runs'/'table1'/'tinyimagenet_lt-ours-if10'/'seed0'/'metrics.json').read_text())
    assert m['status'] == 'complete' and m['config']['loss_params']['bins'] == 30 and m['class_counts'] == [10, 4, 2, 1]
    code, out, _ = cli(cli_status, args[:-2] + ['--results-root', str(tmp_path)])
    assert 'failed      table1/cifar10_lt-softmax-if10' in out and 'done        table1/tinyimagenet_lt-ours-if10' in out
    write_cifar10(data_root)
    code, out, err = cli(cli_reproduce, args)                          # now with rendering
    assert code == 0 and '1 already done, 1 to run' in out, out + err
    assert not (tmp_path/'smoke'/'runs'/'table1'/'cifar10_lt-softmax-if10'/'seed0'/'error.json').exists()
    t = (tmp_path/'smoke'/'tables'/'table1.csv').read_text()
    assert len(t.splitlines()) == 109 and (tmp_path/'smoke'/'figures'/'table1_per_class.pdf').is_file()
    s = summarize(open_results('table1', 'smoke', results_root=tmp_path)).set_index('row')
    assert s.loc['cifar10_lt-softmax-if10', 'paper'] == 86.69 and s.loc['tinyimagenet_lt-ours-if10', 'n'] == 1


@pytest.mark.slow
def test_table2_smoke_imagenet_lt(data_root, shared_root):
    args = ['table2', '--profile', 'smoke', '--rows', 'imagenet_lt_if100-softmax', '--results-root', str(shared_root)]
    code, out, err = cli(cli_reproduce, args)
    assert code == 0, out + err
    m = json.loads((shared_root/'smoke'/'runs'/'table2'/'imagenet_lt_if100-softmax'/'seed0'/'metrics.json').read_text())
    # the exponential IF-100 subset of the train folder (n_max = its largest class, 300), cut to the smoke profile's 48 images
    assert m['config']['dataset'] == 'imagenet_lt_if100' and m['class_counts'][0] / max(m['class_counts'][-1], 1) > 10
    assert set(m['last']['groups']['quartile']) == {'Many', 'Medium', 'Few', 'Rare'}
    for ext in ('md', 'tex', 'csv'): assert (shared_root/'smoke'/'tables'/f'table2.{ext}').is_file()
    assert 'poster: mean of its 4 groups' in (shared_root/'smoke'/'tables'/'table2_overall.md').read_text()
    for stem in ('per_class', 'groups', 'curves', 'margins'): assert (shared_root/'smoke'/'figures'/f'table2_{stem}.png').is_file()
    md = (shared_root/'smoke'/'tables'/'table2.md').read_text()
    assert '| ImageNet-LT (IF 100) | Softmax | reproduced |' in md
    assert re.search(r'\|  \|  \| paper \| 63\.91 \| 48\.07 \| 22\.15 \| 12\.55 \|[^\n]*\| 36\.67 \|', md), md   # shot split between


@pytest.mark.slow
def test_table3_reuses_table2_runs(data_root, shared_root):
    "Softmax (same_as table2) is read from, or run into, <root>/smoke/runs/table2; A+U runs under table3."
    args = ['table3', '--profile', 'smoke', '--rows', 'imagenet_lt_if100-softmax,imagenet_lt_if100-ours_a_u', '--results-root', str(shared_root)]
    had = (shared_root/'smoke'/'runs'/'table2'/'imagenet_lt_if100-softmax'/'seed0'/'metrics.json').exists()
    code, out, err = cli(cli_reproduce, args)
    assert code == 0 and (f"{int(had)} already done" in out), out + err
    assert (shared_root/'smoke'/'runs'/'table2'/'imagenet_lt_if100-softmax'/'seed0'/'metrics.json').is_file()
    assert not (shared_root/'smoke'/'runs'/'table3'/'imagenet_lt_if100-softmax').exists()
    assert (shared_root/'smoke'/'runs'/'table3'/'imagenet_lt_if100-ours_a_u'/'seed0'/'metrics.json').is_file()
    t = summarize(open_results('table3', 'smoke', results_root=shared_root)).set_index(['row', 'metric'])
    assert t.loc[('imagenet_lt_if100-softmax', 'overall'), 'n'] == 1 and t.loc[('imagenet_lt_if100-ours_a_u', 'overall'), 'paper'] == 37.07
    assert t.loc[('imagenet_lt_if100-ours_r', 'overall'), 'n'] == 0
    md = (shared_root/'smoke'/'tables'/'table3.md').read_text()
    lines = [l for l in md.splitlines() if l.startswith('|')]
    at = {l.split('|')[2].strip(): i for i, l in enumerate(lines) if l.split('|')[3].strip() == 'reproduced'}
    quartiles = lambda line: [c.strip() for c in line.split('|')[4:8]]             # Many, Medium, Few, Rare
    assert '—' not in quartiles(lines[at['A+U']]) and '—' not in quartiles(lines[at['Softmax']])
    assert lines[at['R, static counts']].endswith('| — | — | — | — | — |') and '| 38.02 |' in lines[at['R, static counts'] + 1]   # missing stays missing


@pytest.mark.slow
def test_gpus_run_concurrently_one_worker_per_device(tmp_path, data_root, monkeypatch):
    "--gpus 0,1 on a CPU machine (device count patched): two worker processes, CUDA_VISIBLE_DEVICES 0 and 1, overlapping runs."
    monkeypatch.setattr(CLI, '_device_count', lambda: 2)
    rows = ('inaturalist2017-softmax', 'inaturalist2017-ours')
    args = ['table2', '--profile', 'smoke', '--rows', ','.join(rows), '--seeds', '0',
            '--gpus', '0,1', '--device', 'cpu', '--no-render', '--results-root', str(tmp_path)]
    code, out, _ = cli(cli_reproduce, args + ['--dry-run'])
    assert code == 0 and 'gpu0' in out and 'gpu1' in out and not (tmp_path/'smoke'/'runs').exists()
    code, out, err = cli(cli_reproduce, args)
    assert code == 0 and 'on GPUs [0, 1]' in out, out + err
    seen = [_executed_env(tmp_path/'smoke'/'executed'/'table2'/r/'seed0.ipynb') for r in rows]
    assert {s[0] for s in seen} == {'0', '1'}
    (a0, a1), (b0, b1) = [(s[1], s[2]) for s in seen]
    assert a0 < b1 and b0 < a1                                        # the two runs overlapped in time
    m = json.loads((tmp_path/'smoke'/'runs'/'table2'/'inaturalist2017-ours'/'seed0'/'metrics.json').read_text())
    assert m['class_counts'] == [8, 6, 4, 3, 2, 2, 1, 1] and m['config']['device'] == 'cpu'


@pytest.mark.slow
def test_slurm_launcher_through_submitit_local(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv('LTPAPER_SUBMITIT_CLUSTER', 'local')
    args = ['fmnist_lt', '--profile', 'smoke', '--rows', 'seesaw-if10', '--seeds', '0', '--launcher', 'slurm', '--no-render',
            '--results-root', str(tmp_path)]
    code, out, err = cli(cli_reproduce, args)
    assert code == 0 and 'via slurm' in out, out + err
    assert json.loads((tmp_path/'smoke'/'runs'/'fmnist_lt'/'seesaw-if10'/'seed0'/'metrics.json').read_text())['status'] == 'complete'
    assert any((tmp_path/'smoke'/'submitit').glob('*_result.pkl')) or any((tmp_path/'smoke'/'submitit').iterdir())
    code, out, _ = cli(cli_reproduce, args)
    assert code == 0 and '1 already done, 0 to run' in out
