"""kfac_ext.app.data: the digits split, CIFAR-10 reading (on fake batches) and augmentation."""

import os
import pickle

import numpy as np
import pytest
import torch

from kfac_ext.app.data import (
    CIFAR10_FILES,
    DataError,
    _random_crop_flip,
    load_cifar10,
    load_dataset,
    load_digits_dataset,
)


def test_digits_split_is_fixed_stratified_and_standardised():
    from sklearn.datasets import load_digits

    a, b = load_digits_dataset(), load_digits_dataset()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.shape == (1347, 1, 8, 8) and a.test_x.shape == (450, 1, 8, 8)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    # Standardised with training statistics only.
    assert abs(a.train_x.mean().item()) < 1e-5 and abs(a.train_x.std().item() - 1) < 1e-3
    # Every class in both splits, in the proportions of the full set (stratified).
    full = np.bincount(load_digits().target, minlength=10) / 1797
    test = torch.bincount(a.test_y, minlength=10).numpy() / 450
    assert np.abs(full - test).max() < 0.01
    # Together the splits are exactly the original images: undo the affine scaling (raw
    # pixels are the integers 0..16) and compare the rows as multisets.
    raw = load_digits().images.reshape(1797, 64)
    both = torch.cat([a.train_x, a.test_x]).reshape(1797, 64).double().numpy()
    step = (both.max() - both.min()) / 16
    recovered = np.rint((both - both.min()) / step)
    assert np.abs((both - both.min()) / step - recovered).max() < 1e-3
    assert np.array_equal(recovered[np.lexsort(recovered.T)], raw[np.lexsort(raw.T)])
    assert a.num_classes == 10 and a.in_channels == 1


def test_digits_batch_matches_indexing():
    d = load_digits_dataset()
    idx = torch.tensor([5, 0, 1346, 77])
    x, y = d.batch(idx, train=True)
    assert torch.equal(x, d.train_x[idx]) and torch.equal(y, d.train_y[idx])
    x, y = d.batch(torch.tensor([449, 3]), train=False)
    assert torch.equal(x, d.test_x[[449, 3]])


def _crop_flip_reference(x, padding, generator):
    """Per-sample loop: draw the same random numbers, then slice and flip explicitly."""
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    out = []
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shape,padding", [((5, 3, 7, 9), 2), ((3, 2, 32, 32), 4)])
def test_random_crop_flip_matches_loop_reference(shape, padding):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = _random_crop_flip(x, padding, torch.Generator().manual_seed(7))
    want = _crop_flip_reference(x, padding, torch.Generator().manual_seed(7))
    assert torch.equal(got, want)


def _write_fake_cifar(folder, n_per_batch=12, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for name in CIFAR10_FILES:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        arrays[name] = (data, labels)
    return arrays


def test_cifar10_reads_python_batches_and_normalises(tmp_path):
    arrays = _write_fake_cifar(str(tmp_path / "cifar-10-batches-py"))
    d = load_dataset("cifar10", str(tmp_path))  # finds the cifar-10-batches-py subfolder
    assert d.train_x.shape == (60, 3, 32, 32) and d.test_x.shape == (12, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8
    raw = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(d.train_x.reshape(60, -1), torch.from_numpy(raw))
    assert d.test_y.tolist() == arrays["test_batch"][1]
    x, y = d.batch(torch.tensor([3, 1]), train=False)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    want = (d.test_x[[3, 1]].double() / 255 - mean.double()) / std.double()
    assert torch.allclose(x.double(), want, atol=1e-5)
    # Training batches are augmented; the same generator seed gives the same batch.
    a, _ = d.batch(torch.arange(8), True, torch.Generator().manual_seed(3))
    b, _ = d.batch(torch.arange(8), True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (8, 3, 32, 32)


def test_cifar10_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*test_batch"):
        load_cifar10(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_cifar10(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("cifar10", None)


def test_cifar10_corrupt_batch_names_the_file(tmp_path):
    _write_fake_cifar(str(tmp_path))
    with open(tmp_path / "data_batch_3", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(str(tmp_path))


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="digits"):
        load_dataset("mnist")


def _rewrite_batch(folder, name, data, labels):
    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)


@pytest.mark.parametrize(
    "name,data,labels,message",
    [
        (
            "data_batch_2",
            np.zeros((4, 3072), np.uint8),
            [0, 9, 255, 3],
            "data_batch_2: label 255 at index 2 is outside 0..9",
        ),
        ("data_batch_4", np.zeros((2, 3072), np.uint8), [-1, 0], "label -1 at index 0"),
        ("test_batch", np.zeros((0, 3072), np.uint8), [], "test_batch: holds no images"),
        ("data_batch_1", np.zeros((2, 3072), np.uint8), [0.5, 1.0], "labels must be integers"),
        ("data_batch_5", np.full((2, 3072), 300, np.int64), [0, 1], "pixels must be integers in 0..255"),
        ("test_batch", np.zeros((2, 3072), np.uint8), [0, 1, 2], "expected data of shape"),
    ],
)
def test_cifar10_bad_batch_is_refused_at_load_naming_the_file(tmp_path, name, data, labels, message):
    _write_fake_cifar(str(tmp_path))
    _rewrite_batch(str(tmp_path), name, data, labels)
    with pytest.raises(DataError, match=message) as info:
        load_cifar10(str(tmp_path))
    assert name in str(info.value)


def test_cifar10_wider_integer_pixels_in_range_are_accepted(tmp_path):
    _write_fake_cifar(str(tmp_path))
    _rewrite_batch(str(tmp_path), "test_batch", np.full((2, 3072), 200, np.int64), [0, 1])
    d = load_cifar10(str(tmp_path))
    assert d.test_x.dtype == torch.uint8 and int(d.test_x.max()) == 200


class _Payload:
    """A pickle that runs code when loaded (writes a file)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar10_batch_that_would_run_code_is_refused(tmp_path):
    _write_fake_cifar(str(tmp_path))
    target = str(tmp_path / "pwned")
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Payload(target), b"labels": [0]}, f)
    with pytest.raises(DataError, match="data_batch_1.*refusing to load posix.mkdir"):
        load_cifar10(str(tmp_path))
    assert not os.path.exists(target)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL, "numpy 1"])
def test_cifar10_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    _write_fake_cifar(str(tmp_path))
    data = np.arange(2 * 3072).reshape(2, 3072).astype(np.uint8)
    blob = pickle.dumps(
        {b"data": data, b"labels": [3, 4], b"filenames": [b"a.png", b"b.png"]},
        protocol=2 if protocol == "numpy 1" else protocol,
    )
    if protocol == "numpy 1":  # the module name numpy 1 wrote, as in the real CIFAR-10 files
        assert b"numpy._core.multiarray\n" in blob
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (tmp_path / "test_batch").write_bytes(blob)
    d = load_cifar10(str(tmp_path))
    assert torch.equal(d.test_x.reshape(2, -1), torch.from_numpy(data))
    assert d.test_y.tolist() == [3, 4]
