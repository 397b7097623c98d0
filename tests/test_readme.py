"""Every code block of README.md runs: ```python blocks in a fresh interpreter importing this checkout, the
`ltpaper train` command of the ```bash blocks parsed exactly as written and then run for one epoch on a small subset
into a temporary out-dir. Unlabelled blocks are layouts and placeholders (`nbs/X.ipynb`), not commands. The README
stays a front page (at most 10,000 characters, every link resolving), and its loss example shows weights that moved."""
import re, shlex, subprocess, sys

import pytest

from ltpaper.cli import COMMANDS, parse_train_args

from helpers import FMNIST, ROOT, env

BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", (ROOT/'README.md').read_text(), re.S | re.M)]
PYTHON = [code for lang, code in BLOCKS if lang == 'python']
BASH = [code for lang, code in BLOCKS if lang in ('bash', 'sh', 'shell')]


def _commands(code: str) -> list[list[str]]:
    "The commands of a shell block: continuation lines joined, comments and blank lines dropped."
    lines = code.replace('\\\n', ' ').splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip() and not line.strip().startswith('#')]


def test_readme_has_code_blocks():
    assert PYTHON and BASH and all(lang in ('', 'python', 'bash', 'sh', 'shell') for lang, _ in BLOCKS)


def test_readme_is_a_front_page():
    text = (ROOT/'README.md').read_text()
    assert len(text) <= 10_000, f'README.md has {len(text):,} characters: move details to a page under docs/'
    links = re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text)
    local = [l for l in links if not l.startswith(('http://', 'https://'))]
    assert 'https://arxiv.org/abs/2204.09234' in links and len(local) >= 7, links
    assert not [l for l in local if not (ROOT/l).is_file()], 'README links to missing files'
    assert {f'docs/{p}.md' for p in ('losses', 'reproducing', 'results', 'robustness', 'performance', 'contributing')} <= set(local)


def test_the_loss_example_shows_weights_that_moved(tmp_path):
    "The example trains a few steps before it prints the weights: no class shows the all-ones weights of a first batch."
    (code,) = [c for c in PYTHON if 'last_weights' in c]
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    spans = [tuple(map(float, m)) for m in re.findall(r'weights (\d+\.\d+) \.\. (\d+\.\d+)', r.stdout)]
    assert len(spans) >= 2 and all(lo < 1 < hi for lo, hi in spans), r.stdout
    assert re.search(r'eval loss \d+\.\d+', r.stdout), r.stdout


@pytest.mark.parametrize('code', PYTHON, ids=[f'python{i}' for i in range(len(PYTHON))])
def test_python_block_runs(code, tmp_path):
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=dict(env(), PAGER='cat', TERM='dumb'),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize('code', BASH, ids=[f'bash{i}' for i in range(len(BASH))])
def test_bash_block_commands(code, tmp_path):
    for argv in _commands(code):
        assert argv[0] == 'ltpaper' and argv[1] in COMMANDS, argv
        if argv[1] != 'train':
            continue
        parse_train_args(argv[2:])                                     # as written: every flag and value accepted
        if not (FMNIST/'train-images-idx3-ubyte.gz').is_file():
            pytest.skip("Debian's dataset-fashion-mnist not installed")
        quick = ['--epochs', '1', '--milestones', '', '--lr-decay', '', '--warmup-epochs', '0', '--limit-train', '300',
                 '--limit-test', '100', '--threads', '1', '--out-dir', str(tmp_path/'run'), '--no-progress']
        r = subprocess.run([sys.executable, '-m', 'ltpaper.cli', *argv[1:], *quick], cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and 'last top-1' in r.stdout, r.stderr[-3000:]
        assert (tmp_path/'run'/'metrics.json').is_file()
