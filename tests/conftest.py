import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder of the development checkout (absent in a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (it exists only next to the development checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _default_dtype(request):
    """Each test runs with its module's ``DEFAULT_DTYPE`` (float32 unless declared) and restores it,
    so no test can leak a global default dtype into the others."""
    want = getattr(request.module, "DEFAULT_DTYPE", torch.float32)
    old = torch.get_default_dtype()
    torch.set_default_dtype(want)
    yield
    torch.set_default_dtype(old)


def _with_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def single_thread():
    """For tests made of many small tensor ops: one thread is much faster on a shared 2-core machine."""
    yield from _with_threads(1)


@pytest.fixture
def two_threads():
    """torch set to 2 intra-op threads (tests of the thread-count choice); the previous count is restored."""
    yield from _with_threads(2)
