"""Portable CPU numerics (ltpaper.numerics): the AVX2 pins make this machine's bits those of any x86-64 machine with
AVX2; the canary (tests/canary.py) is checked against its committed hash whenever the numerics that decide its bits
agree with the ones it was made with, and names what differs otherwise; every process that computes a result is
pinned (train, reproduce's kernels, verify's workers) and records its fingerprint."""
import json, os, subprocess, sys, textwrap

import pytest

from ltpaper.numerics import MODE_VAR, PINS, can_pin, numerics_differ, numerics_key, pinned_env
from helpers import ROOT, env, smoke

CANARY = json.loads((ROOT/'tests'/'canary.json').read_text())

# Five SGD steps of a small conv net on fixed random data; the parameter hash under the AVX2 pins. Measured with torch
# 2.14.1: 9c643f7c8e80 on an AMD EPYC with AVX2 only (defaults and pins alike) and on an AMD EPYC with AVX-512 under
# the pins (its defaults give d4f7cd68fc06; ATEN_CPU_CAPABILITY=default gives 8b12922fd5c6).
PROBE = textwrap.dedent('''
    import hashlib, torch
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
                            torch.nn.Flatten(), torch.nn.Linear(16 * 32 * 32, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    print(torch.backends.cpu.get_cpu_capability(), hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()[:12])
''')
PROBE_AVX2 = '9c643f7c8e80'


def _py(code_or_file, environ, *args):
    cmd = [sys.executable, *(['-c', code_or_file] if '\n' in code_or_file else [code_or_file]), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def _native():
    e = env()
    for k in PINS: e.pop(k, None)
    e[MODE_VAR] = 'native'
    return e


def test_pins_give_the_avx2_machines_bits():
    "The probe under the pins prints the hash an AVX2-only machine prints, whatever this processor's instruction set."
    pinned = pinned_env(_native() | {MODE_VAR: 'pinned'})
    if can_pin(): assert _py(PROBE, pinned) == f'AVX2 {PROBE_AVX2}'
    else: assert not set(PINS) & set(pinned)          # no AVX2 (or not x86-64): nothing is pinned, runs say so


def test_canary_matches_its_committed_hash_under_the_same_numerics():
    "Same numerics as the canary's maker: the same hash, bit for bit; other numerics: named, and the canary is still deterministic."
    run = lambda: json.loads(_py(str(ROOT/'tests'/'canary.py'), env()))
    now = run()
    other = numerics_differ(CANARY['fingerprint'], now['fingerprint'])
    if not other:
        assert now['hash'] == CANARY['hash'], f"the canary's bits changed under the same numerics: {now} vs {CANARY}"
    else:   # e.g. LTPAPER_NUMERICS=native, or no AVX2: nothing to compare bit for bit with; what differs is named
        assert now['hash'] != CANARY['hash'] or other, other
        assert run()['hash'] == now['hash']                                  # deterministic all the same


def test_canary_under_native_kernels_names_what_differs():
    "With the pins off the fingerprint says why, and the difference from the committed canary is named (never silent)."
    now = json.loads(_py(str(ROOT/'tests'/'canary.py'), _native()))
    fp = now['fingerprint']
    assert fp['pinned'] is False and fp['why_not_pinned'] == f'{MODE_VAR}=native' and fp['pins'] == {}
    other = numerics_differ(CANARY['fingerprint'], fp)
    assert 'pinned' in other and 'capability' in other or not CANARY['fingerprint']['pinned'], other


def test_every_result_process_is_pinned_and_records_it(tmp_path):
    "`ltpaper train` pins itself before torch loads and writes its fingerprint into metrics.json."
    cfg = smoke(tmp_path/'run', epochs=1)
    args = ['train', '--dataset', 'fmnist_lt', '--loss', 'softmax', '--model', 'small_resnet', '--epochs', '1',
            '--limit-train', '300', '--limit-test', '100', '--device', 'cpu', '--out-dir', str(cfg.out_dir)]
    e = {k: v for k, v in env().items() if k not in PINS}                    # a shell without the pins
    r = subprocess.run([sys.executable, '-m', 'ltpaper.cli', *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    fp = json.loads((tmp_path/'run'/'metrics.json').read_text())['provenance']['numerics']
    if os.environ.get(MODE_VAR, 'pinned') == 'pinned' and can_pin():
        assert fp['pinned'] and fp['capability'] == 'AVX2' and fp['pins'] == PINS, fp
    else: assert not fp['pinned'] and fp['why_not_pinned'], fp
    assert numerics_key(fp)['threads'] == 1


def test_a_bad_numerics_mode_is_refused_in_one_line():
    r = subprocess.run([sys.executable, '-m', 'ltpaper.cli', 'status', 'fmnist_lt'], capture_output=True, text=True,
                       env=env() | {MODE_VAR: 'fast'}, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and MODE_VAR in r.stderr, r.stderr
