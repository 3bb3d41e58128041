"""Datasets: file lookup, checksums, download/offline behaviour, parsers, batching and augmentation.

Everything runs offline on tiny files generated in tmp_path; official checksums are swapped for the fakes' own.
"""

import dataclasses
import gzip
import hashlib
import io
import struct
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from prunekit.data import (
    DATASETS,
    ENV_VAR,
    DataError,
    FileSpec,
    Normalize,
    RandomCropFlip,
    batches,
    decode,
    load_dataset,
    search_dirs,
)
from prunekit.data import files as F
from prunekit.data import text as T
from prunekit.data import vision as V
from prunekit.errors import ConfigError, PrunekitError

REAL_URLOPEN = urllib.request.urlopen


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """No test may see a real data directory or cache, or reach the network."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def offline(*a, **k):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


def write_fake_mnist(root, monkeypatch, dataset="mnist", n_train=12, n_test=6):
    """Fake idx .gz files under root/<dataset>/, with the module's checksums pointed at them."""
    rng = np.random.default_rng(0)
    d = root / dataset
    d.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz"
            raw = idx_bytes(arr)
            gz = gzip.compress(raw, mtime=0)
            (d / name).write_bytes(gz)
            if dataset == "mnist":
                monkeypatch.setitem(V._MNIST_MD5, name, md5(raw))
            else:
                monkeypatch.setitem(V._FASHION_MD5, name, md5(gz))
        arrays[prefix] = (imgs, labels)
    return arrays


def test_registry_has_the_issue_datasets():
    assert {"mnist", "fashion_mnist", "cifar10", "digits", "tinyshakespeare", "synthetic"} <= set(DATASETS.names())


def test_search_order_data_dir_then_env_then_xdg_cache(tmp_path, monkeypatch):
    assert search_dirs() == [tmp_path / "xdg" / "prunekit" / "data"]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert search_dirs() == [tmp_path / "env", tmp_path / "xdg" / "prunekit" / "data"]
    assert search_dirs(tmp_path / "explicit") == [tmp_path / "explicit"]


def test_mnist_from_idx_files_via_env_var(tmp_path, monkeypatch):
    arrays = write_fake_mnist(tmp_path / "data", monkeypatch)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "data"))
    ds = load_dataset("mnist", "train")
    imgs, labels = arrays["train"]
    assert ds.x.shape == (12, 1, 28, 28) and ds.x.dtype == torch.uint8 and ds.task == "classification"
    assert torch.equal(ds.x[:, 0], torch.from_numpy(imgs)) and torch.equal(ds.y, torch.from_numpy(labels).long())
    x, _ = ds.get(slice(0, 3))
    assert x.dtype == torch.float32 and torch.allclose(x, torch.from_numpy(imgs[:3]).float().unsqueeze(1) / 255)
    test = load_dataset("mnist", "test", standardize=True)
    x, _ = test.get(slice(0, 6))
    expect = (torch.from_numpy(arrays["t10k"][0]).float().unsqueeze(1) / 255 - 0.1307) / 0.3081
    assert len(test) == 6 and torch.allclose(x, expect, atol=1e-6)


def test_content_checksum_accepts_a_regzipped_copy(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, monkeypatch)
    p = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()), compresslevel=1, mtime=12345))
    assert len(load_dataset("mnist", "test", tmp_path)) == 6


def test_checksum_mismatch_names_the_file_and_both_checksums(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, monkeypatch)
    p = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[-1] ^= 1
    p.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_dataset("mnist", "train", tmp_path)
    msg = str(e.value)
    assert str(p) in msg and md5(bytes(raw)) in msg and V._MNIST_MD5[p.name] in msg and "decompressed" in msg


def test_offline_and_missing_gives_one_message_with_file_directory_and_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mine"))
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "train")
    msg = str(e.value)
    assert isinstance(e.value, PrunekitError) and "\n" not in msg
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mine" / "mnist") in msg and ENV_VAR in msg
    assert "network disabled" in msg and "yann.lecun.com" in msg
    assert not list((tmp_path / "mine").rglob("*.*")), "a failed download must leave no file behind"


def test_download_false_never_touches_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    with pytest.raises(DataError, match=r"missing input\.txt; put it in .*tinyshakespeare"):
        load_dataset("tinyshakespeare", "train", tmp_path, download=False)


def test_download_is_verified_then_renamed_into_place(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)  # used here only for file:// URLs
    src = tmp_path / "src.txt"
    src.write_bytes(b"hello prunekit\n")
    spec = FileSpec("data.txt", (src.as_uri(),), md5(src.read_bytes()))
    got = F.require("toy", spec, tmp_path / "root")
    assert got == tmp_path / "root" / "toy" / "data.txt" and got.read_bytes() == src.read_bytes()
    bad = dataclasses.replace(spec, name="bad.txt", md5="0" * 32)
    with pytest.raises(DataError, match="checksum mismatch"):
        F.require("toy", bad, tmp_path / "root")
    assert sorted(p.name for p in (tmp_path / "root" / "toy").iterdir()) == ["data.txt"]  # no .part, no bad.txt


def test_fashion_mnist_checks_the_published_gz_checksum(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path, monkeypatch, "fashion_mnist")
    assert len(load_dataset("fashion_mnist", "train", tmp_path)) == 12
    p = tmp_path / "fashion_mnist" / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()), mtime=99))  # same content, different file
    with pytest.raises(DataError, match="md5 of the file"):
        load_dataset("fashion_mnist", "test", tmp_path)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01\x00\x08\x01", "magic"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), "uint8"),
        (idx_bytes(np.zeros(3))[:-1], "payload"),
    ],
)
def test_malformed_idx_is_rejected(data, match):
    with pytest.raises(DataError, match=match):
        V.parse_idx(data)


# -- CIFAR-10 ---------------------------------------------------------------------------------------------


def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    rec = np.concatenate([labels[:, None], chw.reshape(n, -1)], axis=1)
    return rec.tobytes(), chw, labels


def cifar_batches() -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    return {n: cifar_records(3, i) for i, n in enumerate(names)}


def test_cifar10_binary_records_are_read_as_nchw_uint8(tmp_path):
    d = tmp_path / "cifar10" / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    blobs = cifar_batches()
    for n, (b, _, _) in blobs.items():
        (d / n).write_bytes(b)
    ds = load_dataset("cifar10", "train", tmp_path)
    chw = np.concatenate([blobs[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert ds.x.shape == (15, 3, 32, 32) and torch.equal(ds.x, torch.from_numpy(chw))
    assert ds.augment is not None and ds.info["normalize"].mean == V.CIFAR10_MEAN
    test = load_dataset("cifar10", "test", tmp_path)
    assert test.augment is None and torch.equal(test.y, torch.from_numpy(blobs["test_batch.bin"][2]).long())
    x, _ = test.get(slice(0, 1))
    r = blobs["test_batch.bin"][1][0, 0, 0, 0] / 255
    assert x[0, 0, 0, 0].item() == pytest.approx((r - 0.4914) / 0.2470, abs=1e-5)


def test_cifar10_is_read_from_the_verified_archive_without_extracting(tmp_path, monkeypatch):
    d = tmp_path / "cifar10"
    d.mkdir()
    buf = io.BytesIO()
    blobs = cifar_batches()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for n, (b, _, _) in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{n}")
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
    (d / "cifar-10-binary.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(V, "CIFAR10_ARCHIVE", dataclasses.replace(V.CIFAR10_ARCHIVE, md5=md5(buf.getvalue())))
    ds = load_dataset("cifar10", "test", tmp_path)
    assert torch.equal(ds.x, torch.from_numpy(blobs["test_batch.bin"][1]))
    assert sorted(p.name for p in d.iterdir()) == ["cifar-10-binary.tar.gz"]
    monkeypatch.setattr(V, "CIFAR10_ARCHIVE", dataclasses.replace(V.CIFAR10_ARCHIVE, md5="f" * 32))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_npz_is_loaded_without_pickle(tmp_path):
    d = tmp_path / "cifar10"
    d.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(d / "train.npz", x=x, y=np.array([0, 1, 2, 9]))
    ds = load_dataset("cifar10", "train", tmp_path, augment=False)
    assert ds.x[2, 1, 5, 7] == x[2, 5, 7, 1] and ds.y.tolist() == [0, 1, 2, 9]
    np.savez(d / "test.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match=r"expected an \.npz"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar10_missing_lists_every_accepted_form_and_ignores_python_pickles(tmp_path):
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04pickle")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", tmp_path, download=False)
    msg = str(e.value)
    assert "cifar-10-binary.tar.gz" in msg and "c32a1d4ab5d03f1284b67883e8d87530" in msg
    assert "cifar-10-batches-bin/" in msg and "train.npz" in msg and str(tmp_path / "cifar10") in msg


def test_bad_cifar_records_are_rejected():
    with pytest.raises(DataError, match="whole number"):
        V.parse_cifar_bin(b"\x00" * 3074, "x")
    with pytest.raises(DataError, match="labels outside"):
        V.parse_cifar_bin(b"\x0b" + b"\x00" * 3072, "x")


# -- transforms and batching ---------------------------------------------------------------------------------


def test_random_crop_flip_matches_a_per_sample_reference():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    aug = RandomCropFlip(padding=2)
    out = aug(x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    flip = torch.rand(2, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        ref = padded[i, :, oy[i] : oy[i] + 5, ox[i] : ox[i] + 5]
        assert torch.equal(out[i], ref.flip(2) if flip[i] else ref)
    assert out.dtype == torch.uint8 and torch.equal(out, aug(x, torch.Generator().manual_seed(7)))


def test_normalize_is_per_channel():
    x = torch.full((1, 2, 1, 1), 255, dtype=torch.uint8)
    out = Normalize(1 / 255, (0.5, 0.25), (0.5, 0.25))(x)
    assert out.flatten().tolist() == pytest.approx([1.0, 3.0])


def test_batches_cover_every_sample_once_and_are_seeded():
    ds = load_dataset("synthetic", "train", n=50)
    ys = [y for _, y in batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert [len(y) for y in ys] == [16, 16, 16, 2]
    xs = torch.cat([x for x, _ in batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert sorted(xs[:, 0].tolist()) == sorted(ds.x[:, 0].tolist())
    again = [y for _, y in batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert all(torch.equal(a, b) for a, b in zip(ys, again))
    assert [len(y) for _, y in batches(ds, 16, drop_last=True)] == [16, 16, 16]


def test_start_skips_batches_exactly_including_augmentation():
    base = load_dataset("synthetic", "train", n=40, shape=(2, 6, 6))
    ds = dataclasses.replace(base, augment=RandomCropFlip(2))
    full = list(batches(ds, 8, shuffle=True, generator=torch.Generator().manual_seed(3)))
    tail = list(batches(ds, 8, shuffle=True, generator=torch.Generator().manual_seed(3), start=3))
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], tail))
    assert not torch.equal(full[0][0], base.get(slice(0, 8))[0])  # augmentation did something


# -- digits, text, synthetic, the registry front door ------------------------------------------------------


def test_digits_split_is_stratified_and_matches_the_demo():
    from prunekit.demo import load_digits_split

    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 359 and tr.x.shape[1:] == (1, 8, 8)
    assert torch.bincount(te.y).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]  # round(0.2 * class count)
    xtr, ytr, xte, yte = load_digits_split(0)
    assert torch.equal(te.get(slice(None))[0].flatten(1), xte) and torch.equal(te.y, yte)
    assert torch.equal(tr.get(slice(None))[0].flatten(1), xtr) and torch.equal(tr.y, ytr)


def test_tinyshakespeare_vocab_split_and_next_char_windows(tmp_path, monkeypatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text(text)
    monkeypatch.setattr(T, "TINYSHAKESPEARE", dataclasses.replace(T.TINYSHAKESPEARE, md5=md5(text.encode())))
    tr = load_dataset("tinyshakespeare", "train", tmp_path, block_size=8)
    te = load_dataset("tinyshakespeare", "test", tmp_path, block_size=8)
    assert tr.info["vocab"] == "".join(sorted(set(text))) and tr.num_classes == len(set(text))
    n = int(0.9 * len(text))
    assert tr.info["tokens"] == n and te.info["tokens"] == len(text) - n
    assert tr.x.shape == ((n - 9) // 8 + 1, 8) and tr.task == "language_model"
    assert decode(tr, tr.x[0]) == text[:8] and decode(tr, tr.y[0]) == text[1:9] and decode(tr, tr.x[1]) == text[8:16]
    assert decode(te, te.x[0]) == text[n : n + 8]
    overlapping = load_dataset("tinyshakespeare", "train", tmp_path, block_size=8, stride=1)
    assert len(overlapping) == n - 8


def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = load_dataset("synthetic", "test", seed=3), load_dataset("synthetic", "test", seed=3)
    assert torch.equal(a.x, b.x) and len(a) == 256 and a.num_classes == 4
    lm = load_dataset("synthetic_lm", "train", block_size=16)
    assert lm.x.shape[1] == 16 and torch.equal(lm.x[0, 1:], lm.y[0, :-1])


def test_front_door_errors_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(ConfigError, match="allowed: train, test"):
        load_dataset("digits", "valid")
    with pytest.raises(ConfigError, match="dataset options"):
        load_dataset("digits", "train", colour=True)
