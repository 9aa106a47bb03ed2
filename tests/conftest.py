import os

import pytest

# Ray reads this when it is first imported: with it, the test clusters (tests/test_cluster.py) and their
# drivers use 127.0.0.1 only, never the machine's network address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from mnist_models.core.data import Dataset, Split, load_dataset


@pytest.fixture(scope="session")
def mnist5k() -> Dataset:
    return load_dataset("mnist-5k")


@pytest.fixture(scope="session")
def small5k(mnist5k) -> Dataset:
    """1,000 train / 500 test real digits: enough to learn, quick to train."""
    return Dataset(
        "mnist-5k",
        Split(mnist5k.train.images[:1000], mnist5k.train.labels[:1000]),
        Split(mnist5k.test.images[:500], mnist5k.test.labels[:500]),
        mnist5k.source,
    )
