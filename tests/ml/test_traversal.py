"""Latent traversals (Figures 2, 3, 5, 6): values, grids of codes, decoded images, PNGs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ml.traversal import attribute_grid, attribute_traversal, attribute_values, grid_png, traverse


def identity_decoder(Z: np.ndarray) -> np.ndarray:
    """A 'decoder' that shows z itself as a 1×1×d image, so traversals can be checked exactly."""
    return Z.reshape(len(Z), 1, 1, Z.shape[1])


@pytest.fixture
def Z() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)


def test_attribute_values_span_the_reference_quantiles(Z: np.ndarray) -> None:
    v = attribute_values(Z, 2, steps=5, quantiles=(0.1, 0.9))
    lo, hi = np.quantile(Z[:, 2], [0.1, 0.9])
    np.testing.assert_allclose(v, np.linspace(lo, hi, 5), rtol=1e-6)
    assert v.shape == (5,) and v.dtype == np.float32
    assert np.all(np.diff(attribute_values(Z, 0)) > 0) and len(attribute_values(Z, 0)) == 7


def test_traverse_changes_only_the_chosen_dimension(Z: np.ndarray) -> None:
    items, values = Z[:3], np.array([-2.0, 0.0, 1.5], np.float32)
    T = traverse(items, 1, values)
    assert T.shape == (3, 3, 4)
    np.testing.assert_array_equal(T[:, :, 1], np.broadcast_to(values, (3, 3)))
    for j in (0, 2, 3):
        np.testing.assert_array_equal(T[:, :, j], np.repeat(items[:, j : j + 1], 3, axis=1))
    np.testing.assert_array_equal(traverse(items, [1], values), T)
    assert items[0, 1] != -2.0  # the input is not modified in place
    np.testing.assert_array_equal(items, Z[:3])


def test_traverse_two_dimensions_spans_a_grid(Z: np.ndarray) -> None:
    T = traverse(Z[:2], [0, 3], np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]))
    assert T.shape == (2, 9, 4)
    np.testing.assert_array_equal(T[0, :, 0], [1, 1, 1, 2, 2, 2, 3, 3, 3])  # first dim slowest
    np.testing.assert_array_equal(T[0, :, 3], [10, 20, 30] * 3)
    np.testing.assert_array_equal(T[1, :, 1], np.full(9, Z[1, 1]))
    assert traverse(Z[:2], [0, 3], ([1.0, 2.0], [5.0, 6.0, 7.0])).shape == (2, 6, 4)


def test_attribute_traversal_decodes_each_step(Z: np.ndarray) -> None:
    values = attribute_values(Z, 2, steps=6)
    imgs = attribute_traversal(identity_decoder, Z[:4], 2, values)
    assert imgs.shape == (4, 6, 1, 1, 4)
    np.testing.assert_array_equal(imgs[:, :, 0, 0, 2], np.broadcast_to(values, (4, 6)))
    for j in (0, 1, 3):  # the other dims stay the item's own
        np.testing.assert_array_equal(imgs[:, :, 0, 0, j], np.repeat(Z[:4, j : j + 1], 6, axis=1))


def test_attribute_traversal_applies_the_inverse_before_decoding(Z: np.ndarray) -> None:
    values = np.array([0.0, 1.0], np.float32)
    imgs = attribute_traversal(identity_decoder, Z[:2], 0, values, inverse=lambda z: 2.0 * z + 1.0)
    np.testing.assert_allclose(imgs[:, :, 0, 0, 0], [[1.0, 3.0], [1.0, 3.0]])
    np.testing.assert_allclose(imgs[:, 0, 0, 0, 1], 2.0 * Z[:2, 1] + 1.0, rtol=1e-6)


def test_attribute_traversal_with_a_vae_decoder() -> None:
    from ml.vae import VAE

    X = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    vae = VAE(image_shape=(1, 8, 8), latent_dim=3, hidden=16, channels=(4, 8), epochs=1).fit(X)
    Zs = vae.encode(X)
    imgs = attribute_traversal(vae.decode, Zs[:3], 1, attribute_values(Zs, 1, steps=4))
    assert imgs.shape == (3, 4, 1, 8, 8) and imgs.min() >= 0.0 and imgs.max() <= 1.0


def test_attribute_grid_rows_move_the_first_dim_and_columns_the_second(Z: np.ndarray) -> None:
    va, vb = attribute_values(Z, 1, steps=5), attribute_values(Z, 3, steps=4)
    imgs = attribute_grid(identity_decoder, Z[:3], (1, 3), (va, vb))
    assert imgs.shape == (3, 5, 4, 1, 1, 4)  # [items, a, b, C, H, W]
    zs = imgs[:, :, :, 0, 0, :]  # the decoded "image" is the code itself
    # Down a column only dim 1 changes (to va); along a row only dim 3 changes (to vb).
    np.testing.assert_array_equal(np.diff(zs, axis=1)[..., [0, 2, 3]], 0.0)
    np.testing.assert_array_equal(np.diff(zs, axis=2)[..., [0, 1, 2]], 0.0)
    np.testing.assert_array_equal(zs[:, :, :, 1], np.broadcast_to(va[None, :, None], (3, 5, 4)))
    np.testing.assert_array_equal(zs[:, :, :, 3], np.broadcast_to(vb[None, None, :], (3, 5, 4)))
    for j in (0, 2):  # the other dims stay the item's own
        np.testing.assert_array_equal(zs[:, :, :, j], np.broadcast_to(Z[:3, j, None, None], (3, 5, 4)))


def test_attribute_grid_round_trips_through_the_inverse(Z: np.ndarray) -> None:
    # An invertible affine "lens": z* = z A + c. The grid decodes inverse(z*); mapping the decoded z
    # forward again must give back exactly the z* grid.
    rng = np.random.default_rng(3)
    A = (np.eye(4) + 0.3 * rng.normal(size=(4, 4))).astype(np.float64)
    c = rng.normal(size=4)
    A_inv = np.linalg.inv(A)
    Zs = Z @ A + c
    values = (attribute_values(Zs, 0, steps=3), attribute_values(Zs, 2, steps=3))
    imgs = attribute_grid(identity_decoder, Zs[:2], [0, 2], values, inverse=lambda zs: (zs - c) @ A_inv)
    z_back = imgs[:, :, :, 0, 0, :].astype(np.float64)
    zs_again = z_back @ A + c
    np.testing.assert_allclose(zs_again, traverse(Zs[:2], [0, 2], values).reshape(2, 3, 3, 4), atol=1e-4)
    assert not np.allclose(z_back, zs_again)  # the decoder really saw z, not z*


def test_attribute_grid_with_a_lens_inverse_round_trips() -> None:
    pytest.importorskip("ml.lens")
    from ml.lens import InterpretableLens

    rng = np.random.default_rng(0)
    Zb = rng.normal(size=(120, 4)).astype(np.float32)
    y = (Zb[:, 0] > 0).astype(np.int64)
    attrs = [{"name": "a", "kind": "categorical", "levels": ["no", "yes"]}]
    lens = InterpretableLens(attrs, n_flows=2, hidden=16, epochs=2, dims_per_attribute=2, device="cpu")
    lens.fit(Zb, {"a": y})
    d0, d1 = lens.attribute_dims_["a"][:2]
    Zs = np.asarray(lens.transform(Zb))
    values = (attribute_values(Zs, d0, steps=3), attribute_values(Zs, d1, steps=3))
    imgs = attribute_grid(identity_decoder, Zs[:2], [d0, d1], values, inverse=lens.inverse_transform)
    z_back = imgs[:, :, :, 0, 0, :].reshape(-1, 4)
    np.testing.assert_allclose(
        np.asarray(lens.transform(z_back)).reshape(2, 3, 3, 4),
        traverse(Zs[:2], [d0, d1], values).reshape(2, 3, 3, 4),
        atol=1e-3,
    )


def test_grid_png_groups_rows_with_a_gap() -> None:
    images = np.random.default_rng(0).random((2 * 3, 3, 1, 4, 4)).astype(np.float32)  # two items' 3×3 grids
    img = _decode_png(grid_png(images, pad=1, group_rows=3, group_gap=5))
    assert img.size == (3 * 4 + 4, 6 * 4 + 7 + 5)
    px = np.asarray(img)
    y0 = 1 + 3 * 5 + 5  # the first tile row of the second block starts after the gap
    np.testing.assert_array_equal(px[y0 : y0 + 4, 1:5], np.round(images[3, 0, 0] * 255))
    assert _decode_png(grid_png(images, group_rows=6)).size == _decode_png(grid_png(images)).size
    with pytest.raises(ValueError, match="group_rows"):
        grid_png(images, group_rows=4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda Z: attribute_values(Z, 4), "dimension index"),
        (lambda Z: attribute_values(Z, 0, steps=0), "steps"),
        (lambda Z: attribute_values(Z, 0, quantiles=(0.9, 0.1)), "quantiles"),
        (lambda Z: attribute_values(Z[:, 0], 0), r"\[N, d\]"),
        (lambda Z: traverse(np.full((2, 4), np.nan), 0, [1.0]), "NaN"),
        (lambda Z: traverse(Z, [0, 1, 2], [1.0]), "1 or 2"),
        (lambda Z: traverse(Z, [1, 1], ([1.0], [2.0])), "differ"),
        (lambda Z: traverse(Z, [0, 1], [1.0, 2.0, 3.0]), "pair"),
        (lambda Z: traverse(Z, 0, [[1.0, 2.0]]), "1-D"),
        (lambda Z: attribute_traversal(lambda z: z[:1], Z[:2], 0, [1.0]), "decoder"),
        (lambda Z: attribute_grid(identity_decoder, Z[:2], 1, ([1.0], [2.0])), "two dimension"),
        (lambda Z: attribute_grid(identity_decoder, Z[:2], [0, 1], [1.0, 2.0, 3.0]), "pair"),
    ],
)
def test_bad_arguments_are_refused(Z: np.ndarray, call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(Z)


def _decode_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_grid_png_has_the_expected_size_and_content() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, 7, 1, 8, 8)).astype(np.float32)
    img = _decode_png(grid_png(images, pad=1, scale=4))
    assert img.mode == "L" and img.size == (7 * 32 + 8, 3 * 32 + 4)  # (width, height)
    px = np.asarray(img)
    assert px.std() > 20  # not blank
    np.testing.assert_array_equal(px[0], 128)  # grey border row (pad_value 0.5)
    # tile (row 1, col 2), upscaled by nearest neighbour
    y0, x0 = 1 + 1 * 33, 1 + 2 * 33
    np.testing.assert_array_equal(px[y0 : y0 + 32 : 4, x0 : x0 + 32 : 4], np.round(images[1, 2, 0] * 255))


def test_grid_png_colour_and_channelless_inputs() -> None:
    rgb = _decode_png(grid_png(np.random.default_rng(1).random((2, 3, 3, 4, 4)), pad=0))
    assert rgb.mode == "RGB" and rgb.size == (12, 8)
    grey = _decode_png(grid_png(np.zeros((2, 2, 5, 5)) + np.eye(5), pad=2, pad_value=1.0))
    assert grey.size == (2 * 5 + 3 * 2, 2 * 5 + 3 * 2)
    assert np.asarray(grey).max() == 255 and np.asarray(grey).min() == 0


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((2, 8, 8)), "shape"),
        (np.zeros((2, 2, 2, 8, 8)), "C in"),
        (np.full((1, 1, 8, 8), np.nan), "NaN"),
        (np.zeros((0, 3, 8, 8)), "empty"),
        (np.zeros((1, 1, 8, 8), np.uint8), "dtype"),
    ],
)
def test_grid_png_refuses_bad_images(images: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        grid_png(images)
