"""The lens's alignment (``ml.lens.alignment``): an exact rotation that starts z* on the attributes."""

from __future__ import annotations

import numpy as np
import pytest

from ml.attributes import Attribute
from ml.lens import InterpretableLens
from ml.lens.alignment import attribute_rotation
from tests.ml.test_lens import entangled_problem, split
from tests.quality import SEED, at_least

CLS = Attribute("cls", "categorical", ("a", "b", "c"))
LEV = Attribute("lev", "ordinal", ("1", "2", "3", "4", "5"))


def _labels(cls: np.ndarray, lev: np.ndarray, lab: np.ndarray) -> dict[str, np.ndarray]:
    s = {"cls": np.full(len(cls), -1), "lev": np.full(len(lev), -1)}
    s["cls"][lab], s["lev"][lab] = cls[lab], lev[lab]
    return s


def test_the_rotation_is_orthogonal_and_puts_each_attribute_on_its_own_dimension():
    z, cls, lev, _ = entangled_problem(n=2000, seed=SEED)
    lab, _, test = split(len(z), 150, seed=SEED)
    zs = (z - z.mean(0)) / z.std(0)
    R = attribute_rotation(zs, _labels(cls, lev, lab), [CLS, LEV], {"cls": [0], "lev": [1]})
    np.testing.assert_allclose(R.T @ R, np.eye(z.shape[1]), atol=1e-10)
    rotated = zs[test] @ R
    # On held-out items (seeds 0-5): the level's dimension correlates 0.968-0.984 with it, growing with
    # it, where raw z's best axis reaches 0.59-0.84; on dim 0 the classes' means lie 5.9-6.5 of their
    # largest spread apart (an unrelated direction: about 0).
    at_least("level |correlation| on its rotated dimension", np.corrcoef(rotated[:, 1], lev[test])[0, 1], 0.93)
    means = np.array([rotated[cls[test] == k, 0].mean() for k in range(3)])
    within = np.array([rotated[cls[test] == k, 0].std() for k in range(3)])
    at_least("class separation on dim 0", np.abs(np.diff(np.sort(means))).min() / within.max(), 4.0)


def test_unlabelled_or_single_level_attributes_still_get_an_orthonormal_basis():
    z, cls, _, _ = entangled_problem(n=300, seed=SEED)
    zs = (z - z.mean(0)) / z.std(0)
    s = {"cls": np.full(300, -1), "lev": np.where(np.arange(300) < 20, 2, -1)}  # one level only
    R = attribute_rotation(zs, s, [CLS, LEV], {"cls": [0], "lev": [1]})
    np.testing.assert_allclose(R.T @ R, np.eye(z.shape[1]), atol=1e-10)
    # Soft targets (a consensus over experts) read like their most likely level.
    soft = np.zeros((300, 3))
    soft[np.arange(100), cls[:100]] = 1.0
    hard = {"cls": np.where(np.arange(300) < 100, cls, -1), "lev": np.full(300, -1)}
    R_soft = attribute_rotation(zs, {"cls": soft, "lev": np.full(300, -1)}, [CLS, LEV], {"cls": [0], "lev": [1]})
    R_hard = attribute_rotation(zs, hard, [CLS, LEV], {"cls": [0], "lev": [1]})
    np.testing.assert_allclose(R_soft, R_hard, atol=1e-12)


@pytest.mark.parametrize("align", [True, False])
def test_the_aligned_lens_is_exactly_invertible_and_survives_its_checkpoint(align):
    z, cls, lev, _ = entangled_problem(n=600, seed=SEED)
    lab, _, _ = split(len(z), 100, seed=SEED)
    lens = InterpretableLens([CLS, LEV], n_flows=4, epochs=2, align=align, device="cpu", seed=SEED)
    lens.fit(z, _labels(cls, lev, lab))
    assert (lens.z_rotation_ is not None) == align
    zs = lens.transform(z)
    assert np.abs(lens.inverse_transform(zs) - z).max() < 1e-8
    back = InterpretableLens.from_bytes(lens.to_bytes(), device="cpu")
    assert back.align == align
    np.testing.assert_allclose(back.transform(z), zs, atol=1e-10)
    # A warm start keeps the rotation: z* keeps its meaning from one version to the next.
    back.epochs = 1
    back.fit(z, _labels(cls, lev, lab), warm_start=True)
    if align:
        np.testing.assert_array_equal(back.z_rotation_, lens.z_rotation_)
