"""One table of lens settings: scikit-learn conventions, warm starts that honour (or refuse) a change,
and settings checked without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ml.attributes import Attribute
from ml.lens import InterpretableLens, LensConfig

CLS = Attribute("cls", "categorical", ("a", "b", "c"))


def _problem(n: int = 300) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(n, 4)).astype(np.float32)
    y = (Z[:, 0] > 0).astype(int) + (Z[:, 1] > 1).astype(int)
    return Z, {"cls": np.where(np.arange(n) < 60, y, -1)}


def test_sklearn_clone_round_trips_every_parameter() -> None:
    from sklearn.base import clone

    lens = InterpretableLens([CLS], n_flows=3, hidden=24, alpha="auto", batch_size=64, device="cpu", seed=7)
    copy = clone(lens)
    assert copy is not lens and copy.get_params() == lens.get_params()
    assert copy.set_params(lr=1e-3).lr == 1e-3 and lens.lr is None  # None: the device's step
    with pytest.raises(ValueError, match="n_flows"):
        copy.set_params(n_flows=-1)
    with pytest.raises(ValueError, match="colour"):
        copy.set_params(colour="red")


def test_the_constructor_signature_is_the_config_table() -> None:
    import inspect

    params = inspect.signature(InterpretableLens).parameters
    assert [p for p in params if p not in ("attributes", "device")] == list(LensConfig.names())
    assert {k: params[k].default for k in LensConfig.names()} == LensConfig.defaults()


def test_a_warm_retrain_honours_a_changed_batch_size() -> None:
    from ml import steps

    Z, S = _problem()
    blob, _ = steps.fit_lens(Z, S, [CLS], params={"n_flows": 2, "hidden": 16, "epochs": 2}, device="cpu")
    warm, stats = steps.fit_lens(
        Z,
        S,
        [CLS],
        warm_start_bytes=blob,
        params={"n_flows": 2, "hidden": 16, "batch_size": 64, "warm_epochs": 1},
        device="cpu",
    )
    assert stats["warm_start"] and "note" not in stats
    back = InterpretableLens.from_bytes(warm, device="cpu")
    assert back.config_.batch_size == 64 and back.batch_size == 64
    # One epoch of 300 items at 64 a batch is 5 steps: the history says the new size was used.
    assert len(back.history_) == 1


def test_a_warm_start_refuses_a_structural_change_naming_it() -> None:
    Z, S = _problem()
    lens = InterpretableLens([CLS], n_flows=2, hidden=16, epochs=1, device="cpu").fit(Z, S)
    lens.set_params(hidden=32)
    with pytest.raises(ValueError, match=r"hidden \(16 → 32\)"):
        lens.fit(Z, S, warm_start=True)
    lens.set_params(hidden=16, batch_size=50)
    lens.fit(Z, S, warm_start=True)
    assert lens.config_.batch_size == 50


def test_settings_are_checked_without_torch() -> None:
    code = (
        "import sys; from ml.lens.config import LensConfig; "
        "LensConfig.from_settings({'flow': 'planar', 'n_flows': 4}); "
        "print(json.dumps('torch' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
    with pytest.raises(ValueError, match=r"settings.lens.flow must be one of"):
        LensConfig.from_settings({"flow": "curvy"})
    with pytest.raises(ValueError, match="unknown setting"):
        LensConfig.from_settings({"colour": 1})


def test_unset_batch_size_and_step_are_the_devices_and_stored_concrete() -> None:
    import torch

    from ml.device import CPU_SIZES, CUDA_SIZES, sizes_for

    assert sizes_for(torch.device("cpu"), 60_000) == CPU_SIZES
    # A GPU takes thousands of items a step, but never so many that an epoch has fewer than 8 steps.
    assert sizes_for(torch.device("cuda"), 60_000).lens_batch_size == CUDA_SIZES.lens_batch_size == 4096
    assert sizes_for(torch.device("cuda"), 10_000).lens_batch_size == 1250
    assert sizes_for(torch.device("cuda"), 1_000).lens_batch_size == CPU_SIZES.lens_batch_size
    Z, S = _problem(200)
    lens = InterpretableLens([CLS], n_flows=2, hidden=16, epochs=1, device="cpu").fit(Z, S)
    assert lens.batch_size is None and lens.lr is None  # the parameters as given ...
    assert (lens.config_.batch_size, lens.config_.lr) == (256, 5e-3)  # ... the fit's, as trained
    assert lens.config_.threads == CPU_SIZES.lens_threads == 1  # a CPU step is too small for two threads
    back = InterpretableLens.from_bytes(lens.to_bytes(), device="cpu")
    assert (back.config_.batch_size, back.config_.lr) == (256, 5e-3)
    given = InterpretableLens([CLS], n_flows=2, hidden=16, epochs=1, batch_size=32, lr=1e-2, device="cpu").fit(Z, S)
    assert (given.config_.batch_size, given.config_.lr) == (32, 1e-2)


def test_a_fit_in_a_worker_thread_trains_on_its_threads_and_gives_them_back() -> None:
    import threading

    import torch

    from ml.device import intra_op_threads

    seen: list[int] = []

    def fit() -> None:
        before = torch.get_num_threads()
        with intra_op_threads(1):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads() - before)

    main_before = torch.get_num_threads()
    t = threading.Thread(target=fit)
    t.start()
    t.join()
    assert seen == [1, 0]  # one thread inside, the worker thread's own count restored after
    assert torch.get_num_threads() == main_before  # the calling thread of the web untouched
