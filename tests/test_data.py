import gzip
from pathlib import Path

import pytest
import torch

from mnist_models.core import data
from mnist_models.core.data import DEBIAN_FASHION_DIR, TensorBatches, load_dataset, seed_loader
from mnist_models.system.errors import DataError, UsageError


def test_mnist_5k_is_a_stratified_deterministic_split(mnist5k):
    assert mnist5k.counts() == {"train": 4000, "test": 1000}
    assert mnist5k.train.labels.bincount().tolist() == [400] * 10
    assert mnist5k.test.labels.bincount().tolist() == [100] * 10
    assert mnist5k.train.images.dtype == torch.uint8 and mnist5k.train.images.shape[1:] == (28, 28)
    assert int(mnist5k.train.images.max()) == 255  # raw pixels, not pre-scaled
    again = load_dataset("mnist-5k")
    assert torch.equal(again.train.images, mnist5k.train.images)
    assert torch.equal(again.test.labels, mnist5k.test.labels)


def test_train_and_test_do_not_overlap(mnist5k):
    train = {bytes(img.numpy()) for img in mnist5k.train.images}
    assert not any(bytes(img.numpy()) in train for img in mnist5k.test.images)


def test_synthetic_has_mnist_shape():
    dataset = data.synthetic_dataset(100, 10)
    assert dataset.counts() == {"train": 100, "test": 10}
    assert dataset.train.images.shape == (100, 28, 28)


def test_unknown_dataset():
    with pytest.raises(UsageError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_missing_mnist_without_download_names_offline_alternatives(tmp_path):
    with pytest.raises(DataError, match="mnist-5k.*fashion-mnist"):
        load_dataset("mnist", tmp_path, download=False)


def _write_idx(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def _idx_images(n: int) -> bytes:
    header = bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    return header + bytes(n * 28 * 28)


def _idx_labels(n: int) -> bytes:
    return bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(n)


def _fake_mnist_root(tmp_path: Path, train_images: bytes) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    _write_idx(raw / "train-images-idx3-ubyte", train_images)
    _write_idx(raw / "train-labels-idx1-ubyte", _idx_labels(20))
    _write_idx(raw / "t10k-images-idx3-ubyte", _idx_images(10))
    _write_idx(raw / "t10k-labels-idx1-ubyte", _idx_labels(10))
    return tmp_path


def test_well_formed_idx_files_load_through_torchvision(tmp_path):
    dataset = load_dataset("mnist", _fake_mnist_root(tmp_path, _idx_images(20)), download=False)
    assert dataset.counts() == {"train": 20, "test": 10}


def test_truncated_idx_file_is_a_data_error(tmp_path):
    root = _fake_mnist_root(tmp_path, _idx_images(20)[:-500])
    with pytest.raises(DataError, match="corrupt IDX file"):
        load_dataset("mnist", root, download=False)


def test_idx_with_wrong_magic_is_a_data_error(tmp_path):
    root = _fake_mnist_root(tmp_path, b"\x00\x00\x0d\x03" + _idx_images(20)[4:])
    with pytest.raises(DataError):
        load_dataset("mnist", root, download=False)


def test_corrupt_debian_gzip_is_a_data_error(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (debian / f"{name}.gz").write_bytes(gzip.compress(_idx_images(5))[:30])  # cut short
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", debian)
    with pytest.raises(DataError, match="corrupt file"):
        load_dataset("fashion-mnist", tmp_path / "root", download=False)


@pytest.mark.skipif(
    not (DEBIAN_FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_the_debian_package(tmp_path):
    dataset = load_dataset("fashion-mnist", tmp_path, download=False)
    assert dataset.counts() == {"train": 60_000, "test": 10_000}
    assert dataset.train.labels.bincount().tolist() == [6000] * 10
    assert "Debian" in dataset.source
    # staged once in torchvision's layout; the second load reads it from there
    assert "Debian" not in load_dataset("fashion-mnist", tmp_path, download=False).source


def test_both_loaders_yield_the_same_kind_of_batches(small5k):
    torch.manual_seed(0)
    seed_x, seed_y = next(iter(seed_loader(small5k.train, 50)))
    tensor_x, tensor_y = next(iter(TensorBatches(small5k.train, 50)))
    for x, y in ((seed_x, seed_y), (tensor_x, tensor_y)):
        assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert y.shape == (50,) and y.dtype == torch.int64


def test_seed_loader_matches_tensor_scaling_exactly(small5k):
    """ToTensor's scaling and ours agree to the bit, so the loaders differ only in cost."""
    from mnist_models.core.data import SeedStyleImages

    x, label = SeedStyleImages(small5k.train)[3]
    assert torch.equal(x, small5k.train.images[3].unsqueeze(0).float().div(255))
    assert label == int(small5k.train.labels[3])


def test_tensor_batches_drop_last_and_reshuffle(small5k):
    batches = TensorBatches(small5k.train, 300)
    assert len(batches) == 3  # 1000 // 300, the remainder dropped like the seed's drop_last
    torch.manual_seed(0)
    first = torch.cat([y for _, y in batches])
    second = torch.cat([y for _, y in batches])
    assert len(first) == 900 and not torch.equal(first, second)
