"""Tests for ml.data: loaders refuse bad input with clear errors, sprites carry their factors, thickness is right."""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from ml import data

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MNIST = DATA / "mnist"
FASHION = DATA / "fashion-mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST test files not found under {MNIST} (shared data directory absent)",
)
needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST test files not found under {FASHION}",
)

# From /work/shared/data/README.md.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_test() -> data.Dataset:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST test files not found under {MNIST}")
    return data.load_mnist(MNIST, "test")


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# digits


def test_digits_are_1797_unit_range_8x8_images_with_digit_factor():
    ds = data.load_digits()
    assert len(ds) == 1797
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == np.float32
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    counts = np.bincount(ds.factors["digit"], minlength=10)
    assert counts.sum() == 1797 and counts.min() >= 170 and counts.max() <= 185
    assert ds.factors["digit"].dtype == np.int64
    np.testing.assert_array_equal(ds.source_index, np.arange(1797))
    assert ds.name == "digits" and ds.errors == [] and ds.external_ids is None


def test_dataset_refuses_mismatched_factor_length():
    with pytest.raises(ValueError, match="factor 'digit'"):
        data.Dataset(np.zeros((3, 1, 4, 4), np.float32), {"digit": np.zeros(2)}, np.arange(3), "x")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        data.Dataset(np.zeros((3, 4, 4), np.float32), {}, np.arange(3), "x")


# --------------------------------------------------------------------------------------------------
# MNIST / IDX


@needs_mnist
def test_mnist_test_split_matches_published_counts_and_mean(mnist_test):
    ds = mnist_test
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == np.float32
    assert np.bincount(ds.factors["label"]).tolist() == MNIST_TEST_COUNTS
    assert abs(float(ds.images.mean()) - 0.1325) < 0.001
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.name == "mnist-test"
    np.testing.assert_array_equal(ds.source_index, np.arange(10000))


@needs_fashion
def test_fashion_mnist_reads_with_the_same_loader():
    ds = data.load_mnist(FASHION, "test")
    assert np.bincount(ds.factors["label"]).tolist() == [1000] * 10
    assert abs(float(ds.images.mean()) - 0.2868) < 0.001


@needs_mnist
def test_raw_idx_reads_the_same_as_gzip(tmp_path, mnist_test):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((MNIST / f"{name}.gz").read_bytes()))
    raw = data.load_mnist(tmp_path, split="test")
    np.testing.assert_array_equal(raw.images, mnist_test.images)
    np.testing.assert_array_equal(raw.factors["label"], mnist_test.factors["label"])
    labels = data.read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    assert labels.dtype == np.uint8 and labels.shape == (10000,)


def test_labels_file_is_optional(tmp_path):
    pixels = np.arange(3 * 4 * 5, dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(2051, (3, 4, 5), pixels.tobytes()))
    ds = data.load_mnist(tmp_path)
    assert ds.images.shape == (3, 1, 4, 5) and ds.factors == {}
    np.testing.assert_allclose(ds.images.ravel(), pixels / 255.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (idx_bytes(1234, (10, 28, 28), b""), "bad magic 1234, expected 2051"),
        (idx_bytes(2051, (10, 28, 28), bytes(100)), "truncated: expected 7840 bytes of pixels, found 100"),
        (idx_bytes(2051, (10, 28, 28), bytes(7841)), "trailing data"),
        (idx_bytes(2051, (10, 100_000, 100_000), b""), "absurd header"),
        (idx_bytes(2051, (2**31, 28, 28), b""), "absurd header"),
        (b"\x00\x00", "truncated header"),
    ],
    ids=["bad-magic", "truncated", "trailing", "absurd-dims", "absurd-count", "short-header"],
)
def test_bad_idx_files_raise_value_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(content))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz") as info:
        data.load_mnist(tmp_path, "test")
    assert message in str(info.value)


@needs_mnist
def test_truncated_gzip_is_a_value_error_not_eof(tmp_path):
    cut = (MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()[:50_000]
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(cut)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: truncated gzip"):
        data.load_mnist(tmp_path, "test")


def test_corrupt_gzip_is_a_value_error(tmp_path):
    good = gzip.compress(idx_bytes(2051, (2, 2, 2), bytes(8)))
    bad = good[:12] + bytes(b ^ 0xFF for b in good[12:20]) + good[20:]
    (tmp_path / "x.gz").write_bytes(bad)
    with pytest.raises(ValueError, match=r"x\.gz"):
        data.read_idx(tmp_path / "x.gz")


def test_image_and_label_counts_must_agree(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(2051, (3, 2, 2), bytes(12)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(2049, (4,), bytes(4)))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: 4 labels for the 3 images"):
        data.load_mnist(tmp_path)


def test_labels_with_image_magic_are_refused(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(2051, (3, 2, 2), bytes(12)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(2051, (3, 2, 2), bytes(12)))
    with pytest.raises(ValueError, match="bad magic 2051, expected 2049"):
        data.load_mnist(tmp_path)


def test_missing_mnist_files_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.load_mnist(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        data.load_mnist(tmp_path, "validation")


# --------------------------------------------------------------------------------------------------
# Image folders and zips


@pytest.fixture
def image_files() -> dict[str, bytes]:
    """Three good 6×5 PNGs in subfolders, one corrupt, one of another size, a text file, archiver noise."""
    rng = np.random.default_rng(0)
    files = {f"cls{k}/img{k}.png": png_bytes(rng.integers(0, 256, (5, 6), dtype=np.uint8)) for k in range(3)}
    files["cls0/bad.png"] = b"this is not a png"
    files["cls1/big.png"] = png_bytes(np.zeros((9, 9), np.uint8))
    files["notes.txt"] = b"hello"
    files[".DS_Store"] = b"\x00\x01"
    files["__MACOSX/cls0/._img0.png"] = b"resource fork"
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(zipfile.ZipInfo(name), content)
    return path


def check_loaded(ds: data.Dataset, files: dict[str, bytes]) -> None:
    assert ds.external_ids == ["cls0/img0.png", "cls1/img1.png", "cls2/img2.png"]
    assert ds.images.shape == (3, 1, 5, 6)
    expected = np.stack([np.asarray(Image.open(io.BytesIO(files[n]))) for n in ds.external_ids]) / 255.0
    np.testing.assert_allclose(ds.images[:, 0], expected, atol=1e-6)
    errors = "\n".join(ds.errors)
    assert "cls0/bad.png: cannot identify image file" in errors
    assert "cls1/big.png: skipped, size 9x9 differs" in errors
    assert "notes.txt" in errors
    assert "DS_Store" not in errors and "MACOSX" not in errors
    # Positions among the sorted image files: cls0/bad.png (0) and cls1/big.png (2) leave gaps.
    assert ds.source_index.tolist() == [1, 3, 4]


def test_image_folder_loads_good_images_and_reports_bad_ones(tmp_path, image_files):
    ds = data.load_image_folder(write_folder(tmp_path / "upload", image_files))
    check_loaded(ds, image_files)
    assert ds.name == "upload"


def test_image_zip_loads_like_the_folder(tmp_path, image_files):
    path = write_zip(tmp_path / "upload.zip", image_files)
    check_loaded(data.load_image_folder(path), image_files)
    with open(path, "rb") as f:  # an uploaded file object works too
        check_loaded(data.load_image_folder(f), image_files)


def test_image_folder_resizes_and_converts_to_rgb(tmp_path, image_files):
    ds = data.load_image_folder(write_folder(tmp_path, image_files), size=(8, 4), mode="RGB")
    assert ds.images.shape == (4, 3, 4, 8)  # the 9×9 image is resized too
    np.testing.assert_array_equal(ds.images[:, 0], ds.images[:, 2])  # grey source: equal channels
    assert len(ds.errors) == 2  # bad.png and notes.txt


@pytest.mark.parametrize(
    "entry", ["../evil.png", "/etc/evil.png", "C:\\evil.png", "a/../../evil.png", "a\\..\\evil.png"]
)
def test_zip_slip_entry_refuses_the_whole_archive(tmp_path, entry):
    ok = png_bytes(np.zeros((4, 4), np.uint8))
    path = write_zip(tmp_path / "slip.zip", {"ok.png": ok, entry: ok})
    with pytest.raises(ValueError, match="unsafe zip entry") as info:
        data.load_image_folder(path)
    assert repr(entry) in str(info.value)


def test_zip_bomb_is_refused_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", png_bytes(np.zeros((4, 4), np.uint8)))
        with zf.open("bomb.png", "w") as f:
            zero = bytes(1 << 20)
            for _ in range(64):  # 64 MiB of zeros, about 64 KiB compressed
                f.write(zero)
    assert path.stat().st_size < 1 << 20
    # "Without expanding it" measured as memory, not time: the peak of Python allocations stays far
    # below the 64 MiB the bomb expands to (it reads at most the 8 MiB limit, in chunks).
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="above the 8,388,608 byte limit"):
            data.load_image_folder(path, max_total_bytes=8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"  # measured 0.06 MiB (refused from its headers)


def test_zip_whose_headers_understate_the_size_is_not_expanded(tmp_path):
    """A bomb whose headers claim 1 KB is read only as far as the claim, then fails its CRC check."""
    payload = bytes(32 << 20)
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.png", png_bytes(np.zeros((4, 4), np.uint8)))
        zf.writestr("bomb.png", payload)
    blob = bytearray(path.read_bytes())
    real = struct.pack("<I", len(payload))
    for offset in (i for i in range(len(blob) - 3) if blob[i : i + 4] == real):
        blob[offset : offset + 4] = struct.pack("<I", 1024)  # local and central headers
    path.write_bytes(bytes(blob))
    tracemalloc.start()
    try:
        ds = data.load_image_folder(path, max_total_bytes=8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB"  # measured 8.1 MiB; never the 32 MiB payload
    assert ds.external_ids == ["ok.png"]
    assert any(e.startswith("bomb.png:") for e in ds.errors)


def test_zip_headers_claiming_too_much_are_refused_up_front(tmp_path):
    path = write_zip(tmp_path / "claims.zip", {"a.png": png_bytes(np.zeros((4, 4), np.uint8))})
    blob = bytearray(path.read_bytes())
    central = blob.rfind(b"PK\x01\x02")
    blob[central + 24 : central + 28] = struct.pack("<I", 2**31)  # uncompressed size: 2 GiB
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="above the 1,073,741,824 byte limit"):
        data.load_image_folder(path)


def test_streaming_read_stops_at_the_budget():
    class Endless(io.RawIOBase):
        served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            self.served += len(buffer)
            return len(buffer)

    stream = Endless()
    from ml.data.image_files import _read_capped, _TooLarge

    with pytest.raises(_TooLarge):
        _read_capped(stream, 10_000)
    assert stream.served == 10_001


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header announcing width×height pixels, with no image data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_images_above_the_pixel_bound_are_reported_not_decoded(tmp_path):
    files = {
        "a.png": png_bytes(np.zeros((4, 4), np.uint8)),
        "huge.png": png_claiming(20_000, 20_000),
        "wide.png": png_claiming(10_000, 6_000),
    }
    ds = data.load_image_folder(write_folder(tmp_path, files))
    assert ds.external_ids == ["a.png"]
    assert ds.errors[0].startswith("huge.png: image is above the 50,000,000 pixel limit")
    assert ds.errors[1] == "wide.png: image is 10000x6000 = 60,000,000 pixels, above the 50,000,000 pixel limit"
    small = {"a.png": png_bytes(np.zeros((4, 4), np.uint8)), "b.png": png_bytes(np.zeros((2, 3), np.uint8))}
    ds = data.load_image_folder(write_folder(tmp_path / "small", small), max_image_pixels=10)
    assert ds.external_ids == ["b.png"]
    assert ds.errors == ["a.png: image is 4x4 = 16 pixels, above the 10 pixel limit"]


def test_folder_without_images_is_a_value_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"no loadable images.*bad\.png"):
        data.load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        data.load_image_folder(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# Procedural sprites


@pytest.fixture(scope="module")
def shapes() -> data.Dataset:
    return data.make_shapes(3000, seed=1)


def test_shapes_are_deterministic_and_in_range():
    ds = data.make_shapes(5000, seed=0)  # its speed is measured by `lenslab bench data`
    assert ds.images.shape == (5000, 1, 32, 32) and ds.images.dtype == np.float32
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    np.testing.assert_array_equal(ds.images[:50], data.make_shapes(50, seed=0).images)  # prefix-stable
    assert not np.array_equal(ds.images[:50], data.make_shapes(50, seed=1).images)
    f = ds.factors
    assert set(f) == {"shape", "scale", "rotation", "x", "y"}
    assert sorted(np.unique(f["shape"])) == [0, 1, 2] and sorted(np.unique(f["scale"])) == list(range(6))
    assert f["rotation"].min() >= 0 and f["rotation"].max() < 360
    assert min(f["x"].min(), f["y"].min()) >= 0 and max(f["x"].max(), f["y"].max()) <= 1
    # Sprites stay inside the frame.
    assert ds.images[:, 0, [0, -1], :].max() == 0 and ds.images[:, 0, :, [0, -1]].max() == 0


def test_shape_is_recoverable_by_a_linear_classifier(shapes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # |FFT| removes the position (a sprite moving inside a black frame is a circular shift), so a
    # linear model sees shape and rotation only; normalising by the DC term removes the ink amount.
    spectrum = np.abs(np.fft.rfft2(shapes.images[:, 0])).reshape(len(shapes), -1)
    features = spectrum / spectrum[:, :1]
    y = shapes.factors["shape"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    with threadpool_limits(1):  # BLAS threads oversubscribe a busy CI box: 0.3 s becomes 10 s
        model.fit(features[:2000], y[:2000])
    assert model.score(features[2000:], y[2000:]) > 0.9


def test_scale_is_ink_area_whatever_the_shape(shapes):
    area = shapes.images.sum(axis=(1, 2, 3))
    assert spearmanr(area, shapes.factors["scale"]).statistic > 0.9
    # Same area for every shape at the same scale (within 3%).
    for level in range(6):
        at = shapes.factors["scale"] == level
        means = [area[at & (shapes.factors["shape"] == k)].mean() for k in range(3)]
        assert max(means) / min(means) < 1.03


def test_position_and_rotation_follow_the_documented_conventions(shapes):
    im = shapes.images[:, 0].astype(np.float64)
    rows, cols = np.mgrid[: im.shape[1], : im.shape[2]] + 0.5
    mass = im.sum(axis=(1, 2))
    cx, cy = (im * cols).sum(axis=(1, 2)) / mass, (im * rows).sum(axis=(1, 2)) / mass
    assert np.corrcoef(cx, shapes.factors["x"])[0, 1] > 0.99  # x grows to the right
    assert np.corrcoef(cy, shapes.factors["y"])[0, 1] > 0.99  # y grows downwards
    # An ellipse's long axis points at its rotation (counter-clockwise, mod 180°).
    e = shapes.factors["shape"] == 1
    dx, dy = cols - cx[e, None, None], -(rows - cy[e, None, None])
    w = im[e]
    angle = np.degrees(0.5 * np.arctan2(2 * (w * dx * dy).sum((1, 2)), (w * (dx * dx - dy * dy)).sum((1, 2))))
    error = (angle - shapes.factors["rotation"][e] + 90) % 180 - 90
    assert np.median(np.abs(error)) < 2.0


def test_upright_sprites_and_the_levels_an_expert_reads_off_them():
    ds = data.make_shapes(600, seed=0, rotation_range=0)
    f = ds.factors
    assert np.all(f["rotation"] == 0)
    # Same draws as the rotated set: only the turn differs, so shape, scale and position agree.
    turned = data.make_shapes(600, seed=0)
    for key in ("shape", "scale", "x", "y"):
        np.testing.assert_array_equal(f[key], turned.factors[key])
    # An upright square fills its bounding box; a turned one does not.
    sq = np.flatnonzero((f["shape"] == 0) & (f["scale"] == 5))
    rows = (ds.images[sq, 0] > 0.5).any(axis=2).sum(axis=1)
    cols = (ds.images[sq, 0] > 0.5).any(axis=1).sum(axis=1)
    ink = (ds.images[sq, 0] > 0.5).sum(axis=(1, 2))
    assert np.all(ink >= 0.9 * rows * cols)
    with pytest.raises(ValueError, match="rotation_range must be within"):
        data.make_shapes(5, rotation_range=400)

    levels = data.by_eye_levels(f)
    names = {a["name"]: a["levels"] for a in data.BY_EYE_ATTRIBUTES}
    assert set(levels) == set(names) == {"shape", "size", "position"}
    for name, got in levels.items():
        assert set(got) == set(names[name]) and len(got) == 600  # every level occurs
    np.testing.assert_array_equal(levels["shape"], np.array(data.SHAPE_NAMES)[f["shape"]])
    small, large = levels["size"] == "small", levels["size"] == "large"
    assert f["scale"][small].max() == 1 and f["scale"][large].min() == 4
    # Position is where the ink is: the centre of mass moves right from left to right.
    im = ds.images[:, 0]
    cx = (im * (np.arange(32) + 0.5)).sum(axis=(1, 2)) / im.sum(axis=(1, 2))
    means = [cx[levels["position"] == p].mean() for p in ("left", "centre", "right")]
    assert means[0] + 3 < means[1] < means[2] - 3


# --------------------------------------------------------------------------------------------------
# Embeddings


def test_embeddings_load_from_npy_and_npz(tmp_path):
    z = np.random.default_rng(0).normal(size=(7, 3))
    np.save(tmp_path / "e.npy", z)
    out = data.load_embeddings(tmp_path / "e.npy")
    assert out.dtype == np.float32 and out.shape == (7, 3)
    np.testing.assert_allclose(out, z, rtol=1e-6)
    np.savez(tmp_path / "z.npz", z=z, other=np.zeros(3))
    np.testing.assert_allclose(data.load_embeddings(tmp_path / "z.npz"), z, rtol=1e-6)
    np.savez(tmp_path / "one.npz", anything=z)
    np.testing.assert_allclose(data.load_embeddings(tmp_path / "one.npz"), z, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("vec.npy", lambda p: np.save(p, np.zeros(5)), "must be 2-D"),
        ("nan.npy", lambda p: np.save(p, np.array([[0.0, np.nan]])), "non-finite"),
        ("huge.npy", lambda p: np.save(p, np.array([[1e300]])), "non-finite"),
        ("empty.npy", lambda p: np.save(p, np.zeros((0, 4))), "empty"),
        (
            "obj.npy",
            lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "unpickling",
        ),
        ("two.npz", lambda p: np.savez(p, a=np.zeros((2, 2)), b=np.zeros((2, 2))), "'embeddings' or 'z'"),
        ("text.npy", lambda p: Path(p).write_text("1,2,3"), "cannot load"),
    ],
)
def test_bad_embeddings_raise_value_error_naming_the_file(tmp_path, name, make, message):
    make(tmp_path / name)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")) as info:
        data.load_embeddings(tmp_path / name)
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------------
# Stroke thickness


@needs_mnist
def test_fast_medial_axis_equals_scikit_image(mnist_test):
    from skimage.morphology import medial_axis

    rng = np.random.default_rng(0)
    blobs = [rng.random((20, 30)) > 0.4, np.ones((5, 5), bool), np.zeros((6, 6), bool), np.ones((2, 7), bool)]
    digits = [data.binarise_for_thickness(mnist_test.images[k]) for k in range(50)]
    for seed, image in enumerate(digits + blobs):
        skeleton, distance = data.fast_medial_axis(image, rng=seed)
        expected_skeleton, expected_distance = medial_axis(image, return_distance=True, rng=seed)
        np.testing.assert_array_equal(skeleton, expected_skeleton)
        np.testing.assert_array_equal(distance, expected_distance)


@needs_mnist
def test_thickness_equals_the_plain_scikit_image_recipe(mnist_test):
    """Cropping and batching are optimisations only: same numbers as medial_axis on the full image."""
    from skimage.morphology import medial_axis

    images = mnist_test.images[:40]
    expected = []
    for image in images:
        skeleton, distance = medial_axis(data.binarise_for_thickness(image), return_distance=True, rng=0)
        expected.append(2.0 * distance[skeleton].mean() / 4)
    np.testing.assert_allclose(data.stroke_thickness(images, batch_size=16), expected, rtol=1e-12)


def line_image(width: int, angle_deg: float, size: int = 48, length: float = 30.0) -> np.ndarray:
    """A straight antialiased bar of the given width, centred, at an angle."""
    sub = 8
    coords = (np.arange(size * sub) + 0.5) / sub - size / 2
    x, y = np.meshgrid(coords, coords)
    t = np.deg2rad(angle_deg)
    along, across = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    inside = (np.abs(across) <= width / 2) & (np.abs(along) <= length / 2)
    return inside.reshape(size, sub, size, sub).mean(axis=(1, 3))


def test_thickness_of_drawn_bars_matches_their_width():
    widths = [2, 4, 6]
    for angle in (0.0, 30.0, 90.0):
        images = np.stack([line_image(w, angle) for w in widths])
        measured = data.stroke_thickness(images)
        assert np.all(np.diff(measured) > 0), (angle, measured)
        np.testing.assert_allclose(measured, widths, rtol=0.25)


def test_thickness_of_empty_image_is_zero_and_shapes_are_checked():
    images = np.zeros((2, 1, 10, 10), np.float32)
    images[1, 0, 3:7, 3:7] = 1.0
    out = data.stroke_thickness(images)
    assert out.dtype == np.float64 and out[0] == 0.0 and out[1] > 0
    with pytest.raises(ValueError, match="images must be"):
        data.stroke_thickness(np.zeros((10, 10)))


@needs_mnist
def test_mnist_thickness_tracks_ink_per_skeleton_length(mnist_test):
    from skimage.morphology import skeletonize

    images = mnist_test.images[:1000]
    thickness = data.stroke_thickness(images)  # its speed is measured by `lenslab bench data`
    assert 1.5 < np.median(thickness) < 3.5  # MNIST strokes are 2–3 px wide
    ratio = []
    for image in images[:300]:
        binary = data.binarise_for_thickness(image)
        ratio.append(binary.sum() / max(1, skeletonize(binary).sum()) / 4)  # area / length, in pixels
    assert spearmanr(thickness[:300], ratio).statistic > 0.8


def test_parallel_thickness_equals_serial():
    images = np.stack([line_image(w, 10.0 * w, size=28, length=18) for w in (1, 2, 3, 4, 5, 6)] * 4)
    serial = data.stroke_thickness(images, batch_size=6)
    np.testing.assert_array_equal(data.stroke_thickness(images, batch_size=6, n_jobs=2), serial)


def test_thickness_levels_are_quantile_bins_reusable_on_another_split():
    t = np.random.default_rng(0).gamma(4.0, 0.6, size=1000)
    levels, edges = data.thickness_levels(t)
    assert levels.dtype == np.int64 and edges.shape == (4,)
    assert np.bincount(levels).tolist() == [200] * 5
    other = np.array([edges[0] - 1, edges[0], edges[3] + 1, np.nan])
    again, same = data.thickness_levels(other, edges=edges)
    assert again.tolist() == [0, 1, 4, -1] and np.array_equal(same, edges)
    with pytest.raises(ValueError, match="sorted"):
        data.thickness_levels(t, edges=[2.0, 1.0])


# --------------------------------------------------------------------------------------------------
# Rotation


def test_rotate_images_turns_counter_clockwise_per_image():
    images = np.zeros((2, 1, 21, 21), np.float32)
    images[:, 0, 10, 15] = 1.0  # a dot right of the centre
    out = data.rotate_images(images, [90.0, 0.0])
    assert out.shape == images.shape and out.dtype == np.float32
    assert np.unravel_index(out[0, 0].argmax(), (21, 21)) == (5, 10)  # now above the centre
    np.testing.assert_allclose(out[1], images[1], atol=1e-6)
    three_d = data.rotate_images(images[:, 0], 90.0)
    np.testing.assert_allclose(three_d[0], out[0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="one angle per image"):
        data.rotate_images(images, [1.0, 2.0, 3.0])
