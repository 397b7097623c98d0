"""Puts tests/ on sys.path so that test files share code through `from helpers import ...` (tests/helpers.py)
under any pytest import mode; test files never import from each other. Pins the CPU kernels to AVX2 before any test
imports torch (ltpaper.numerics; `LTPAPER_NUMERICS=native` runs the processor's own kernels), so that the tests that
compare bits see the same numerics on every x86-64 machine; child processes inherit the pins."""
import sys
from pathlib import Path

from ltpaper.numerics import pin

pin()
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path: sys.path.insert(0, _TESTS)
