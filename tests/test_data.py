"""Tests of the dataset layer, patchdb.data (docs/math.md "Images and noise")."""

from __future__ import annotations

import gzip
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchdb.data import Dataset, check_images, dataset_names, load_dataset
from patchdb.data.idx import read_idx as _read_idx
from patchdb.errors import PatchdbError, PatchdbFileError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared datasets not available")


# --- helpers ---------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_like(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    prefix = {"train": "train", "test": "t10k"}[split]
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def tiny_pixels(n: int, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def make_folder(root: Path, per_class: dict[str, np.ndarray]) -> None:
    """Class sub-folders of PNGs, named 000.png, 001.png, ..."""
    for cls, pix in per_class.items():
        for i, p in enumerate(pix):
            save_png(root / cls / f"{i:03d}.png", p)


def zip_folder(folder: Path, zip_path: Path, arc_prefix: str = "") -> None:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, arc_prefix + f.relative_to(folder).as_posix())


@pytest.fixture(scope="module")
def embedded() -> Dataset:
    return load_dataset()


# --- embedded default --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["resize", "pad"])
def test_embedded_loads_sorted(policy: str) -> None:
    ds = load_dataset("embedded", policy=policy)
    assert ds.images.shape == (2000, 1, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous() and ds.labels.dtype == torch.int64
    assert (len(ds), ds.channels, ds.height, ds.width, ds.num_classes) == (2000, 1, 32, 32, 10)
    assert bool((ds.labels[1:] >= ds.labels[:-1]).all())
    assert ds.name == "embedded" and ds.meta["policy"] == policy
    assert ds.meta["original_size"] == [28, 28] and ds.meta["split"] == "test"
    json.dumps(ds.meta)  # JSON-serialisable
    counts = [stop - start for start, stop in map(ds.class_range, range(10))]
    assert counts == [175, 234, 219, 207, 217, 179, 178, 205, 192, 194]


def test_embedded_default_name_and_names() -> None:
    assert dataset_names() == ("embedded", "mnist", "fashion-mnist", "cifar10")
    assert load_dataset(None, limit=5).name == "embedded"


def test_pad_policy_places_original_pixels(embedded: Dataset) -> None:
    native = load_dataset(policy="none")
    padded = load_dataset(policy="pad")
    assert native.images.shape == (2000, 1, 28, 28)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], native.images)
    assert int(padded.images[:, :, :2].max()) == 0 and int(padded.images[:, :, :, 30:].max()) == 0
    assert torch.equal(embedded.labels, native.labels)


def test_resize_matches_torchvision_bilinear(embedded: Dataset) -> None:
    tf = pytest.importorskip("torchvision.transforms.functional")
    native = load_dataset(policy="none", limit=20)
    resized = load_dataset(policy="resize", limit=20)
    for i in range(20):
        pil = Image.fromarray(native.images[i, 0].numpy())
        ref = np.asarray(tf.resize(pil, [32, 32], interpolation=tf.InterpolationMode.BILINEAR))
        assert np.array_equal(resized.images[i, 0].numpy(), ref)


def test_to_float_range(embedded: Dataset) -> None:
    x = embedded.to_float()
    assert x.dtype == torch.float32 and x.shape == embedded.images.shape
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    check_images(x)
    assert embedded.to_float(torch.float64).dtype == torch.float64
    assert torch.allclose(x, embedded.images.float() / 127.5 - 1)


# --- fingerprint -------------------------------------------------------------------------------


def test_fingerprint_stable_and_content_sensitive(embedded: Dataset) -> None:
    again = load_dataset()
    fp = embedded.fingerprint()
    assert fp == again.fingerprint() == embedded.meta["fingerprint"]
    assert len(fp) == 64 and int(fp, 16) >= 0
    images = embedded.images.clone()
    images[0, 0, 0, 0] ^= 1
    assert Dataset(images, embedded.labels, embedded.classes, "x").fingerprint() != fp
    labels = embedded.labels.clone()
    labels[174] = 1  # still sorted: the last 0 becomes a 1
    assert Dataset(embedded.images, labels, embedded.classes, "x").fingerprint() != fp
    assert load_dataset(policy="pad").fingerprint() != fp


def test_fingerprint_follows_in_place_edits() -> None:
    ds = load_dataset(limit=10)
    fp = ds.fingerprint()
    ds.images[0, 0, 5, 5] ^= 255
    assert ds.fingerprint() != fp


# --- IDX ---------------------------------------------------------------------------------------


def test_idx_reader_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte.gz", arr)
    assert np.array_equal(_read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    raw = tmp_path / "b-idx1-ubyte"
    raw.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    assert _read_idx(raw).tolist() == [7, 8, 9]


def test_idx_reader_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"\x00")
    with pytest.raises(PatchdbError, match="not an IDX file"):
        _read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00\x01")
    with pytest.raises(PatchdbError, match="truncated"):
        _read_idx(short)


def test_mnist_from_idx_files(tmp_path: Path) -> None:
    images = tiny_pixels(12, 28, 28, 1)[..., 0]
    labels = np.array([3, 1, 0, 9, 1, 3, 2, 0, 5, 9, 4, 1], dtype=np.uint8)
    write_mnist_like(tmp_path / "MNIST" / "raw", "test", images, labels)
    ds = load_dataset("mnist", root=tmp_path, split="test", policy="pad")
    order = np.argsort(labels, kind="stable")
    assert ds.labels.tolist() == labels[order].tolist()
    assert np.array_equal(ds.images[:, 0, 2:30, 2:30].numpy(), images[order])
    assert ds.classes == tuple("0123456789") and ds.meta["format"] == "idx"
    # The same folder as a path (the IDX files directly in it).
    direct = load_dataset(tmp_path / "MNIST" / "raw", split="test", policy="none")
    assert direct.name.startswith("idx:") and direct.images.shape == (12, 1, 28, 28)


def test_class_filter_then_limit_then_sort(tmp_path: Path) -> None:
    labels = np.array([3, 1, 0, 9, 1, 3, 2, 0, 5, 9, 4, 1], dtype=np.uint8)
    images = np.repeat(np.arange(12, dtype=np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    write_mnist_like(tmp_path, "train", images, labels)
    ds = load_dataset("mnist", root=tmp_path, classes=[1, 3], limit=4, policy="none")
    # file order of classes {1, 3}: ids 0(3), 1(1), 4(1), 5(3) -> first 4, then sorted by class
    assert ds.labels.tolist() == [1, 1, 3, 3]
    assert ds.images[:, 0, 0, 0].tolist() == [1, 4, 0, 5]
    assert ds.class_range(3) == (2, 4) and ds.meta["classes"] == [1, 3] and ds.meta["limit"] == 4
    with pytest.raises(PatchdbError, match="no images"):
        ds.class_range(0)
    assert len(load_dataset("mnist", root=tmp_path, limit=100)) == 12


def test_env_default_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.arange(10, dtype=np.uint8)
    write_mnist_like(tmp_path / "fashion-mnist", "train", tiny_pixels(10, 28, 28, 1)[..., 0], labels)
    monkeypatch.setenv("PATCHDB_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 10 and ds.classes[0] == "T-shirt/top"


# --- npz, image folders, zips ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    pix = tiny_pixels(6, 32, 32, 1 if layout == "nhw" else 3)
    labels = np.array([2, 0, 1, 0, 2, 1])
    stored = {"nhw": pix[..., 0], "nhwc": pix, "nchw": pix.transpose(0, 3, 1, 2)}[layout]
    np.savez(tmp_path / "d.npz", images=stored, labels=labels)
    ds = load_dataset(str(tmp_path / "d.npz"))
    order = np.argsort(labels, kind="stable")
    assert ds.images.shape == (6, pix.shape[-1], 32, 32)
    assert np.array_equal(ds.images.numpy(), pix[order].transpose(0, 3, 1, 2))
    assert ds.classes == ("0", "1", "2") and ds.name.startswith("npz:")
    assert ds.meta["split"] is None


def test_image_folder(tmp_path: Path) -> None:
    cats, dogs = tiny_pixels(3, seed=1), tiny_pixels(2, seed=2)
    make_folder(tmp_path / "imgs", {"dog": dogs, "cat": cats})
    ds = load_dataset(tmp_path / "imgs", size=8)
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert np.array_equal(ds.images.numpy(), np.concatenate([cats, dogs]).transpose(0, 3, 1, 2))
    assert ds.name.startswith("folder:") and ds.meta["format"] == "folder"


def test_image_folder_grayscale_and_resize(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": tiny_pixels(2, 28, 28, 1), "b": tiny_pixels(2, 28, 28, 1, seed=3)})
    ds = load_dataset(tmp_path)
    assert ds.images.shape == (4, 1, 32, 32) and ds.meta["original_size"] == [28, 28]


def test_zip_of_image_folder_with_splits(tmp_path: Path) -> None:
    train = {"b": tiny_pixels(2, seed=4), "a": tiny_pixels(3, seed=5)}
    test = {"a": tiny_pixels(1, seed=6), "b": tiny_pixels(1, seed=7)}
    make_folder(tmp_path / "src" / "train", train)
    make_folder(tmp_path / "src" / "test", test)
    zip_folder(tmp_path / "src", tmp_path / "d.zip", arc_prefix="top/")
    ds = load_dataset(tmp_path / "d.zip", size=8)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1] and ds.classes == ("a", "b")
    assert np.array_equal(ds.images[:3].numpy(), train["a"].transpose(0, 3, 1, 2))
    assert ds.meta["split"] == "train" and ds.meta["source"].endswith("::top/train")
    te = load_dataset(tmp_path / "d.zip", split="test", size=8, classes=[1])
    assert np.array_equal(te.images.numpy(), test["b"].transpose(0, 3, 1, 2))


def test_zip_without_split_folders(tmp_path: Path) -> None:
    make_folder(tmp_path / "src", {"x": tiny_pixels(2), "y": tiny_pixels(1)})
    zip_folder(tmp_path / "src", tmp_path / "flat.zip")
    ds = load_dataset(tmp_path / "flat.zip", size=8, limit=2)
    # A limit takes the classes in turn, so the 2 images are one of each class.
    assert ds.labels.tolist() == [0, 1] and ds.name.startswith("zip:")
    ds = load_dataset(tmp_path / "flat.zip", size=8, limit=3)
    assert ds.labels.tolist() == [0, 0, 1]


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_name() -> None:
    with pytest.raises(PatchdbError, match="unknown dataset 'imagenet'.*mnist.*zip") as e:
        load_dataset("imagenet")
    assert "\n" not in str(e.value)


def test_missing_files_mention_download(tmp_path: Path) -> None:
    for name in ("mnist", "fashion-mnist", "cifar10"):
        with pytest.raises(PatchdbFileError, match="--download") as e:
            load_dataset(name, root=tmp_path / "nothing")
        assert "\n" not in str(e.value) and isinstance(e.value, FileNotFoundError)


def test_wrong_split_hint(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "test", tiny_pixels(2, 28, 28, 1)[..., 0], np.array([0, 1]))
    with pytest.raises(PatchdbFileError, match="--split test"):
        load_dataset("mnist", root=tmp_path)


def test_mixed_sizes(tmp_path: Path) -> None:
    save_png(tmp_path / "a" / "0.png", tiny_pixels(1, 8, 8)[0])
    save_png(tmp_path / "b" / "0.png", tiny_pixels(1, 6, 6)[0])
    with pytest.raises(PatchdbError, match="different sizes.*8x8.*6x6.*resize"):
        load_dataset(tmp_path, size=8)


def test_label_out_of_range() -> None:
    with pytest.raises(PatchdbError, match="label 12 is out of range 0..9 for embedded"):
        load_dataset(classes=[1, 12])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "val"}, "split 'val'"),
        ({"policy": "crop"}, "policy 'crop'"),
        ({"limit": 0}, "limit 0"),
        ({"size": -1}, "size -1"),
        ({"classes": []}, "empty"),
        ({"classes": ["a"]}, "integer"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(PatchdbError, match=match):
        load_dataset(**kwargs)


def test_size_mismatch_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", images=tiny_pixels(2, 8, 6, 1), labels=np.array([0, 1]))
    with pytest.raises(PatchdbError, match="not square"):
        load_dataset(tmp_path / "r.npz", size=8)
    with pytest.raises(PatchdbError, match="larger than size"):
        load_dataset(tmp_path / "r.npz", size=4, policy="pad")
    assert load_dataset(tmp_path / "r.npz", policy="none").images.shape == (2, 1, 8, 6)


def test_bad_npz_and_unsupported_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), np.float32), labels=np.array([0, 1]))
    with pytest.raises(PatchdbError, match="uint8"):
        load_dataset(tmp_path / "f.npz")
    np.savez(tmp_path / "n.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(PatchdbError, match="'images' and 'labels'"):
        load_dataset(tmp_path / "n.npz")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(PatchdbError, match="not a .zip or .npz"):
        load_dataset(tmp_path / "x.txt")


def test_empty_folder_and_missing_split(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchdbError, match="no images"):
        load_dataset(tmp_path / "empty")
    make_folder(tmp_path / "tr" / "train", {"a": tiny_pixels(1)})
    with pytest.raises(PatchdbError, match="no 'test' folder.*--split train"):
        load_dataset(tmp_path / "tr", split="test", size=8)


def test_class_range_out_of_range(embedded: Dataset) -> None:
    with pytest.raises(PatchdbError, match="label 10 is out of range 0..9"):
        embedded.class_range(10)


def test_dataset_validates_fields(embedded: Dataset) -> None:
    with pytest.raises(PatchdbError, match="uint8"):
        Dataset(embedded.to_float(), embedded.labels, embedded.classes, "x")
    with pytest.raises(PatchdbError, match="not sorted"):
        Dataset(embedded.images, embedded.labels.flip(0), embedded.classes, "x")


# --- check_images ---------------------------------------------------------------------------------


def test_check_images() -> None:
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    check_images(x)
    check_images(x * 1.005)  # small tolerance
    bad = x.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(PatchdbError, match="NaN"):
        check_images(bad, "x0")
    with pytest.raises(PatchdbError, match="outside"):
        check_images(x * 3)
    with pytest.raises(PatchdbError, match="not float"):
        check_images(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(PatchdbError, match="4-D"):
        check_images(x[0])
    with pytest.raises(PatchdbError, match="infinite"):
        check_images(torch.full((1, 1, 2, 2), float("inf")))


# --- real shared data -----------------------------------------------------------------------------


@needs_shared
def test_shared_cifar10_zip() -> None:
    ds = load_dataset("cifar10", root=SHARED / "cifar10-jpeg.zip", limit=50)
    assert ds.images.shape == (50, 3, 32, 32) and ds.classes[0] == "airplane"
    assert ds.num_classes == 10 and ds.name == "cifar10"
    te = load_dataset(SHARED / "cifar10-jpeg.zip", split="test", classes=[9], limit=5)
    assert te.labels.tolist() == [9] * 5 and te.classes[9] == "truck"


@needs_shared
def test_shared_fashion_mnist_test() -> None:
    ds = load_dataset("fashion-mnist", root=SHARED / "fashion-mnist", split="test", limit=100)
    assert ds.images.shape == (100, 1, 32, 32) and ds.classes[9] == "Ankle boot"
    assert bool((ds.labels[1:] >= ds.labels[:-1]).all()) and len(set(ds.labels.tolist())) > 5


@needs_shared
def test_embedded_matches_shared_mnist() -> None:
    src = SHARED / "mnist-t10k"
    ref = load_dataset("mnist", root=src, split="test", limit=2000, policy="none")
    assert ref.fingerprint() == load_dataset(policy="none").fingerprint()
