import io
import os
import subprocess
import tarfile
from pathlib import Path

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


class History:
    """A small git repository holding a copy of this checkout's package: commits on it are the
    histories that bisect and explain are tested on."""

    ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}

    def __init__(self, repo):
        import shutil
        from pathlib import Path

        self.repo = repo
        repo.mkdir()
        package = Path(__file__).resolve().parent.parent / "mnist_models"
        shutil.copytree(package, repo / "mnist_models", ignore=shutil.ignore_patterns("__pycache__"))
        self.git("init", "-q")
        self.commit("the package as it is")

    def git(self, *args: str) -> str:
        import subprocess

        done = subprocess.run(
            ["git", "-C", str(self.repo), *args], capture_output=True, text=True, check=True, env=os.environ | self.ENV
        )
        return done.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-qm", message)
        return self.git("rev-parse", "--short", "HEAD")


@pytest.fixture
def history(tmp_path) -> History:
    return History(tmp_path / "repo")


@pytest.fixture(scope="session")
def committed(tmp_path_factory) -> Path:
    """README.md and reports/ as the last commit holds them, for the tests about the committed evidence:
    a local run (`make bench`, `pytest bench --benchmark-only`) rewrites this machine's evidence in the
    working tree, and `make test` after it must still judge what was committed. Without git (an
    unpacked archive) the working tree is all there is."""
    from mnist_models.system.paths import SOURCE_ROOT

    try:
        archive = subprocess.run(
            ["git", "archive", "HEAD", "README.md", "reports"], cwd=SOURCE_ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return SOURCE_ROOT
    into = tmp_path_factory.mktemp("committed")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))  # 3.10.12+ / 3.11.4+
    return into
