"""Shared set-up of the sampler tests: one torch thread, and ``methods_testlib.py``
importable (pytest runs with ``--import-mode=importlib``, which does not put test
folders on ``sys.path``)."""

import sys
from pathlib import Path

import pytest
import torch

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small networks are much faster, and reproducible, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
