"""benchmarks/paper_cost.py: the plan (one measurement per dataset and loss family, which rows reuse which), the projection
arithmetic on made-up timings, the files it writes loading through the project's own readers at the real sizes, the
deadline, and one tiny CPU run of one cell end to end."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import paper_cost as pc

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PYTHONPATH=str(ROOT))


def test_plan_measures_each_dataset_and_loss_family_once():
    rows, meas = pc.make_plan()
    keys = [m.key for m in meas]
    sets = {'cifar10_lt', 'cifar100_lt', 'tinyimagenet_lt'}
    want = {f'{d}:{f}' for d in sets for f in pc.FAMILIES} | {f'{d}:{f}' for d in ('imagenet_lt_if100', 'inaturalist2017')
                                                              for f in ('softmax', 'ours', 'seesaw')}   # no GHM in Table 2
    assert set(keys) == want and len(keys) == len(want)
    assert [m.family for m in meas][:5] == ['softmax'] * 5            # every dataset's baseline first (the deadline cuts the rest)
    by = {m.key: m for m in meas}
    assert by['cifar10_lt:softmax'].from_row == 'table1/cifar10_lt-softmax-if100'
    assert by['cifar10_lt:ours'].train['loss_params']['binning'] == 'aura'
    assert by['tinyimagenet_lt:ours'].train['loss_params']['bins'] == 30                      # Tiny-ImageNet's own bins
    assert by['imagenet_lt_if100:softmax'].train['batch_size'] == 512 and by['imagenet_lt_if100:softmax'].train['model'] == 'resnet50'
    row = {f'{r.table}/{r.row}': r for r in rows}
    assert row['table1/cifar10_lt-focal-if10'].key == 'cifar10_lt:softmax' and 'focal' in row['table1/cifar10_lt-focal-if10'].note
    assert row['table1/cifar100_lt-ours_tuned-if500'].key == 'cifar100_lt:ours'
    assert row['table1/cifar10_lt-softmax-if500'].note == ''           # same config as the measurement but for the IF
    r_cum = row['table3/imagenet_lt_if100-ours_r_cum']
    assert r_cum.key == 'imagenet_lt_if100:ours' and 'ours_study' in r_cum.note
    shared = sorted(k for k, r in row.items() if not r.own)            # Table 3's rows that are Table 2's runs
    assert shared == [f'table3/imagenet_lt_if100-{m}' for m in ('ours_r_a_au', 'ours_tuned', 'seesaw', 'softmax')]
    assert len(by['imagenet_lt_if100:ours'].rows) == 6 and all(r.seeds == 1 for r in rows)
    assert sum(len(m.rows) for m in meas) == sum(r.own for r in rows) == 126
    rows2, meas2 = pc.make_plan(['table1'], ['softmax', 'ours'], only=['cifar10_lt:*'])
    assert [m.key for m in meas2] == ['cifar10_lt:softmax', 'cifar10_lt:ours']
    assert next(r for r in rows2 if r.row == 'cifar10_lt-seesaw-if100').note == 'timed by cifar10_lt:softmax (seesaw is not in --families)'


def test_measured_config_is_the_paper_rows_with_run_control_fields_only():
    from ltpaper.config import TrainConfig, config_hash
    _, meas = pc.make_plan(['table2'])
    m = next(x for x in meas if x.key == 'imagenet_lt_if100:ours')
    c = pc._run_config(m, '/data', 'cuda', pc.parse_args(['--step', 'compiled']))
    assert c['imbalance_factor'] == 1 and c['num_workers'] == min(12, os.cpu_count()) and c['data_root'] == '/data'
    assert (c['batch_size'], c['eval_batch_size'], c['model'], c['amp'], c['step']) == (512, 1024, 'resnet50', True, 'compiled')
    assert config_hash(TrainConfig(**dict(c, imbalance_factor=100))) == config_hash(TrainConfig(**m.train))   # nothing else changed
    trial = pc._run_config(m, '/data', 'cpu', pc.parse_args(['--device', 'cpu', '--trial-batch', '8', '--workers', '1']))
    assert (trial['batch_size'], trial['eval_batch_size'], trial['num_workers']) == (8, 8, 1)
    assert pc.parse_args(['--step', 'compiled', '--warmup', '0']).warmup == 3          # `ours` recompiles at its second step


def test_real_sizes_and_steps_per_epoch():
    assert [pc.real_train_size('cifar10_lt', f) for f in (500, 100, 10, 1)] == [10_011, 12_406, 20_431, 50_000]   # data/README.md
    assert [pc.real_train_size('cifar100_lt', f) for f in (500, 100, 10, 1)] == [8_155, 10_847, 19_573, 50_000]
    assert pc.real_train_size('inaturalist2017', 435) == 579_184 and len(pc.real_counts('inaturalist2017', 435)) == 5089
    assert pc.real_counts('imagenet_lt_if100', 100)[0] == 1300 and pc.real_counts('imagenet_lt_if100', 100)[-1] == 13   # IF exactly 100
    assert pc.steps_per_epoch(12_406, 128) == 97 and pc.steps_per_epoch(129, 128) == 1 and pc.steps_per_epoch(130, 128) == 2
    assert pc.evals_per_run(200, 1) == 200 and pc.evals_per_run(10, 3) == 4


def _row(name, epochs=200, seeds=1, own=True, dataset='cifar10_lt', imf=100):
    return pc.PlanRow('t', name, dataset, imf, 'softmax', f'{dataset}:softmax', seeds, epochs, 128, 1, own, f't/{name}')


def test_projection_arithmetic_on_made_up_timings():
    rows = [_row(f'r{k}') for k in range(9)]
    p = pc.project(rows, {f't/r{k}': 2.0 for k in range(9)})          # 2 s/epoch x 200 epochs x 9 rows x 1 seed = 1 h
    assert p['t']['hours'] == pytest.approx(1.0) and p['t']['runs'] == 9 and p['all']['hours'] == pytest.approx(1.0)
    rows += [_row('seeds3', seeds=3), _row('shared', own=False)]
    p = pc.project(rows, {**{f't/r{k}': 2.0 for k in range(9)}, 't/seeds3': 1.0, 't/shared': None})
    assert p['t']['hours'] == pytest.approx(1.0 + 3 * 200 / 3600) and p['t']['shared_rows'] == ['t/shared = t/shared']
    p = pc.project(rows, {f't/r{k}': 2.0 for k in range(9)})          # a row without a time: the total is missing
    assert p['t']['hours'] is None and p['all']['hours'] is None and p['t']['missing_rows'] == ['t/seeds3']
    assert p['t']['measured_rows'] == 9 and p['t']['measured_rows_hours'] == pytest.approx(1.0)
    m = dict(status='measured', batch_size=128, s_per_step=0.01, train_start_s=0.5, eval_s_per_image=1e-4, eval_start_s=0.2)
    # 0.5 + 97 steps x 0.01 + (0.2 + 10,000 test images x 1e-4) per epoch, evaluated every epoch
    assert pc.epoch_seconds(_row('x'), m) == pytest.approx(0.5 + 0.97 + 1.2)
    assert pc.epoch_seconds(_row('x', epochs=10), dict(m, s_per_step=0.0, train_start_s=0.0)) == pytest.approx(1.2)
    assert pc.epoch_seconds(_row('x'), dict(m, status='not measured')) is None and pc.epoch_seconds(_row('x'), None) is None
    assert pc.epoch_seconds(_row('x'), dict(m, eval_s_per_image=None)) is None


def test_cifar_files_load_at_real_sizes_through_the_project_reader(tmp_path):
    from ltpaper.data import build_dataset
    pc.write_cifar10(tmp_path)
    pc.write_cifar100(tmp_path)
    for name in ('cifar10_lt', 'cifar100_lt'):
        for f in (100, 1):
            ds = build_dataset(name, root=tmp_path, imbalance_factor=f, split='train')
            assert len(ds) == pc.real_train_size(name, f) and ds.class_counts == pc.real_counts(name, f)
            assert tuple(ds.images.shape[1:]) == (3, 32, 32)
        assert len(build_dataset(name, root=tmp_path, split='test')) == 10_000


def test_jpeg_files_load_through_the_project_readers(tmp_path):
    from ltpaper.data import build_dataset
    pc.write_tiny(tmp_path, per_class=3, val_per_class=2, classes=4)
    ds = build_dataset('tinyimagenet_lt', root=tmp_path, imbalance_factor=1)
    assert len(ds) == 12 and tuple(ds.images.shape[1:]) == (3, 64, 64)
    assert len(build_dataset('tinyimagenet_lt', root=tmp_path, imbalance_factor=1, split='test')) == 8
    info = pc.write_imagenet(tmp_path, n_train=7, n_test=2, classes=3)
    assert info['files'] == 10 and 70_000 < info['bytes'] / info['files'] < 150_000          # ImageNet's mean file: about 110 KB
    ds = build_dataset('imagenet_lt_if100', root=tmp_path, imbalance_factor=1)
    assert ds.num_classes == 3 and len(ds) == 7 and ds.raw(0).size == pc.IMAGENET_SIZE   # all 3 + 2 + 2 (n_max: the largest class)
    assert len(build_dataset('imagenet_lt_if100', root=tmp_path, imbalance_factor=1, split='test')) == 3    # a val folder for every class
    jobs = [(str(tmp_path / 'many' / f'{k}.jpg'), k, 16, 12, 8) for k in range(64)]
    assert pc.write_jpegs(jobs, workers=2) == sum(os.path.getsize(j[0]) for j in jobs)      # in 2 processes
    pc.write_inat(tmp_path, n_train=4, n_test=2, classes=7, size=(80, 60))
    ds = build_dataset('inaturalist2017', root=tmp_path)
    assert ds.num_classes == 7 and len(ds) == 4 and len(build_dataset('inaturalist2017', root=tmp_path, split='test')) == 2


def test_window_stops_at_the_deadline():
    import time
    it = iter([(1, 2, 10), (3, 4, 11), (5, 6, 12)])
    w = pc.Window(it, 2, shift=10)
    assert len(w) == 2 and list(w) == [(1, 2, 0), (3, 4, 1)] and w.done == 2
    w = pc.Window(it, 5, stop_at=time.monotonic() - 1)
    assert list(w) == [] and w.done == 0


def test_deadline_zero_measures_nothing_and_projects_nothing(tmp_path, capsys):
    ns = pc.parse_args(['--device', 'cpu', '--deadline-s', '0', '--tables', 'table2', '--out', str(tmp_path)])
    doc = pc.run(ns)
    assert all(m['result']['status'] == 'not measured' for m in doc['measurements']) and doc['data'] == {}
    assert doc['tables']['table2']['hours'] is None and doc['tables']['table2']['measured_rows'] == 0
    md = (tmp_path / 'paper_cost.md').read_text()
    assert 'CPU TRIAL' in md and 'not a GPU measurement' in md and '| table2 | 14 | 14 | not measured |' in md


def test_a_later_call_keeps_the_measurements_of_an_earlier_one_on_the_same_device(tmp_path):
    import torch
    name, _ = pc.device_label(torch.device('cpu'))
    m = dict(status='measured', batch_size=128, s_per_step=0.01, train_start_s=0.5, eval_s_per_image=1e-4, eval_start_s=0.2)
    prior = dict(device=name, step='eager', trial_batch=None, date='d', measurements=[dict(key='cifar10_lt:softmax', result=m),
                 dict(key='cifar10_lt:ours', result=dict(status='not measured'))])
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'paper_cost.json').write_text(json.dumps(prior))
    doc = pc.run(pc.parse_args(['--device', 'cpu', '--deadline-s', '0', '--tables', 'table1', '--reuse', str(tmp_path / 'a'),
                                '--out', str(tmp_path / 'b')]))
    res = {x['key']: x['result'] for x in doc['measurements']}
    assert res['cifar10_lt:softmax']['reused_from'].endswith('(d)') and res['cifar10_lt:ours']['status'] == 'not measured'
    assert doc['tables']['table1']['measured_rows'] == 20 and doc['tables']['table1']['hours'] is None
    assert 'kept from an earlier call' in (tmp_path / 'b' / 'paper_cost.md').read_text()
    (tmp_path / 'a' / 'paper_cost.json').write_text(json.dumps(dict(prior, device='NVIDIA_H200')))
    with pytest.raises(SystemExit, match='never mixed'):
        pc.run(pc.parse_args(['--device', 'cpu', '--deadline-s', '0', '--tables', 'table1', '--reuse', str(tmp_path / 'a'),
                              '--out', str(tmp_path / 'c')]))


def test_dry_run_prints_the_plan(capsys):
    pc.dry_run(pc.parse_args(['--dry-run', '--tables', 'table2,table3']))
    out = capsys.readouterr().out
    assert out.count('\nmeasure ') + out.startswith('measure ') == 6 and out.count('shared  table3/') == 4
    assert 'imagenet_lt_if100 100 -> 279,350, 546' in out and 'inaturalist2017 435 -> 579,184, 1132' in out
    with pytest.raises(SystemExit): pc.parse_args(['--families', 'ours'])


def test_cpu_trial_of_one_cell_end_to_end(tmp_path):
    "Full-size CIFAR-10 pickles written, the real subset built, one eager step of the paper profile, one eval batch, the projection."
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'paper_cost.py'), '--device', 'cpu', '--steps', '1', '--warmup', '0',
                        '--eval-batches', '1', '--eval-images', '128', '--tables', 'table1', '--only', 'cifar10_lt:softmax',
                        '--out', str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / 'paper_cost.json').read_text())
    assert doc['device_kind'] == 'cpu' and doc['device_words'].startswith('CPU TRIAL') and 'CPU TRIAL' in r.stdout
    (m,) = doc['measurements']
    res = m['result']
    assert res['status'] == 'measured' and res['steps_timed'] == 1 and res['batch_size'] == 128 and res['model'] == 'resnet32'
    assert res['train_images_in_files'] == 12_406 and res['data_path'] == 'device tensor (fast)' and res['eval_s_per_image'] > 0
    assert doc['data']['cifar10_lt']['files'] == 7 and 180e6 < doc['data']['cifar10_lt']['bytes'] < 190e6   # the real size on disk
    timed = {x['row']: x['s_per_epoch'] for x in doc['rows'] if x['key'] == 'cifar10_lt:softmax'}
    assert len(timed) == 20 and all(s > 0 for s in timed.values()) and timed['cifar10_lt-softmax-if1'] > timed['cifar10_lt-softmax-if500']
    t1 = doc['tables']['table1']
    assert t1['hours'] is None and t1['measured_rows'] == 20 and t1['measured_rows_hours'] > 0 and len(t1['missing_rows']) == 88


def test_gpu_check_has_the_cost_step():
    sh = lambda *a: subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_check.sh'), *a], cwd=ROOT, env=ENV, capture_output=True,
                                   text=True, timeout=120)
    r = sh('--dry-run', '--skip', 'cells,loss,throughput,paper')
    assert r.returncode == 0 and 'cost=run' in r.stdout and 'paper=skip' in r.stdout, r.stderr
    r = sh('--skip', 'bogus')                         # refused before anything runs
    assert r.returncode == 2 and 'steps: cells,loss,throughput,paper,cost' in r.stderr
    assert 'paper_cost.py' in (ROOT / 'benchmarks' / 'gpu_check.sh').read_text()
