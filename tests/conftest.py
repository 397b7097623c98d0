"""Puts tests/ on sys.path so that test files share code through `from helpers import ...` (tests/helpers.py)
under any pytest import mode; test files never import from each other."""
import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path: sys.path.insert(0, _TESTS)
