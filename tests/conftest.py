"""Shared test fixtures: the repo root and the real data beside the checkout (../shared/data), when present."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (genuine MNIST, the CIFAR-10 JPEG rebuild); skips when absent, as in a fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (fresh clone): real-data check skipped")
    return SHARED_DATA
