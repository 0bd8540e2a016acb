"""Benchmark: the lens's training on one device, fused step against eager.

Per training step (default lens settings, batch 256): wall time, aten operations, host reads of device
values (``.item()`` and the like; on CUDA also kernel launches and stream synchronisations), from
``torch.profiler``. Then the default cold fit on MNIST's 60,000 training images with 1,000 labelled
(digit and a 5-level stroke thickness), its epoch time and the one-dimension interpretability score it
reaches on 2,000 test images; a warm retrain on 10,000 items; BALD scoring of 1M items.

z is MNIST's first ten principal components, standardised: the cost of a lens step depends on the
shape of z (10-d, as the base VAE's), not on what made it, and PCA takes seconds where the VAE takes
an hour on two cores. Each fit runs with ``fused_step`` true (the product's step) and false (the
step as it was: flow by flow, separate passes for the ELBO and α batches).

Run: ``lenslab bench train --device cpu|cuda`` (this part: ``python -m ml.bench.lens_train``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.bench.common import machine, table, write_results

N_LABELS = 1000
N_TEST = 2000
STEPS_PROFILED = 20
SCORE_ITEMS = 1_000_000


def mnist_pca(data_dir: str | Path, seed: int = 0) -> tuple[Any, Any, Any, np.ndarray, np.ndarray]:
    """MNIST train and test sets, the 10-component PCA fitted on the training images, and the images
    flattened (train, test): what the MNIST benchmarks' z is made from."""
    from sklearn.decomposition import PCA

    from ml.data import load_mnist

    train = load_mnist(Path(data_dir) / "mnist", "train")
    test = load_mnist(Path(data_dir) / "mnist", "test")
    flat_tr, flat_te = train.images.reshape(len(train.images), -1), test.images.reshape(len(test.images), -1)
    return train, test, PCA(10, random_state=seed).fit(flat_tr), flat_tr, flat_te


def mnist_pca_z(data_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """z (10 principal components) of MNIST train and test, and digit and thickness labels."""
    from ml.data import stroke_thickness, thickness_levels

    train, test, pca, flat_tr, flat_te = mnist_pca(data_dir, seed)
    z_tr, z_te = pca.transform(flat_tr).astype(np.float32), pca.transform(flat_te).astype(np.float32)
    rng = np.random.default_rng(seed)
    lab = np.sort(rng.choice(len(z_tr), N_LABELS, replace=False))
    te = np.sort(rng.choice(len(z_te), N_TEST, replace=False))
    thick_lab, edges = thickness_levels(stroke_thickness(train.images[lab]), n_levels=5)
    thick_te, _ = thickness_levels(stroke_thickness(test.images[te]), edges=edges)
    digit = np.full(len(z_tr), -1)
    digit[lab] = train.factors["label"][lab]
    thick = np.full(len(z_tr), -1)
    thick[lab] = thick_lab
    return {
        "Z": z_tr,
        "labels": {"digit": digit, "thickness": thick},
        "lab": lab,
        "Z_test": z_te[te],
        "labels_test": {"digit": test.factors["label"][te], "thickness": thick_te},
    }


def _attributes() -> list[Any]:
    from ml.attributes import Attribute

    return [
        Attribute("digit", "categorical", tuple(str(i) for i in range(10))),
        Attribute("thickness", "ordinal", tuple(str(i) for i in range(1, 6))),
    ]


def _step_counts(data: dict[str, Any], device: Any, fused: bool) -> dict[str, Any]:
    """Per step: ms (difference of a 1- and a 3-epoch fit, so fixed costs drop out), aten ops, host reads."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ml.lens.config import LensConfig
    from ml.lens.train import train

    n = 256 * STEPS_PROFILED
    # 200 labelled items among n, the labelled share of the full run (1,000 of 60,000) or more.
    unlabelled = np.setdiff1d(np.arange(len(data["Z"])), data["lab"])
    rows = np.concatenate([data["lab"][:200], unlabelled[: n - 200]])
    Z, labels = data["Z"][rows], {k: v[rows] for k, v in data["labels"].items()}
    attrs = _attributes()
    cfg = LensConfig(fused_step=fused)

    def fit(epochs: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train(Z, labels, attrs, cfg.with_changes(epochs=epochs), device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    fit(1)  # warm-up
    ms = 1000 * (fit(3) - fit(1)) / (2 * STEPS_PROFILED)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train(Z, labels, attrs, cfg.with_changes(epochs=2, propagation_weight=0.0), device=device)
    steps = 2 * STEPS_PROFILED
    events = list(prof.events())
    reads = 0
    for e in events:
        if e.name != "aten::_local_scalar_dense":
            continue
        p, inside_optimizer = e.cpu_parent, False
        while p is not None:
            inside_optimizer |= "Optimizer.step" in p.name
            p = p.cpu_parent
        reads += not inside_optimizer  # the CPU's Adam step counters live in host memory: no wait
    out = {
        "ms_per_step": round(ms, 2),
        "aten_ops_per_step": round(sum(e.name.startswith("aten::") for e in events) / steps),
        "host_reads_per_step": round(reads / steps, 2),
    }
    if device.type == "cuda":
        out["kernel_launches_per_step"] = round(sum(e.name == "cudaLaunchKernel" for e in events) / steps)
        syncs = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
        out["synchronisations_per_step"] = round(sum(e.name in syncs for e in events) / steps, 2)
    return out


def _cold_fit(data: dict[str, Any], device: Any, fused: bool) -> dict[str, Any]:
    """The default cold fit on all 60,000 items: wall time, epoch time and the test metric."""
    import torch

    from ml.lens.config import LensConfig
    from ml.lens.train import train

    attrs = _attributes()
    cfg = LensConfig(fused_step=fused)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fit = train(data["Z"], data["labels"], attrs, cfg, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    per = test_scores(fit, data, attrs)
    return {
        "seconds": round(seconds, 1),
        "epochs": len(fit.history),
        "seconds_per_epoch": round(seconds / max(1, len(fit.history)), 2),
        "digit": round(per["digit"]["score"], 1),
        "thickness": round(per["thickness"]["score"], 1),
        "digit_dim": per["digit"]["dim"],
        "thickness_dim": per["thickness"]["dim"],
        "designated_dims": fit.attribute_dims,
    }


def test_scores(fit: Any, data: dict[str, Any], attrs: list[Any]) -> dict[str, Any]:
    """The one-dimension metric per attribute of a trained lens (``ml.lens.train``'s fit) on ``data``
    (``mnist_pca_z``'s): the probe fitted on the labelled items' true labels, scored on the test items."""
    import torch

    from ml.metrics import interpretability_score

    mod = fit.module.cpu()
    with torch.no_grad():
        zs_lab = mod.flows.transform(torch.as_tensor(fit.standardise(data["Z"][data["lab"]]), dtype=torch.float32))
        zs_te = mod.flows.transform(torch.as_tensor(fit.standardise(data["Z_test"]), dtype=torch.float32))
    lab_labels = {k: v[data["lab"]] for k, v in data["labels"].items()}
    return interpretability_score(zs_lab.numpy(), lab_labels, zs_te.numpy(), data["labels_test"], attrs)["attributes"]


FIRST_FIT_TARGET_S = 20.0  # a project's first lens, so that labelling is model-driven soon after its pretrain


def _warm_retrain(data: dict[str, Any], device: str) -> dict[str, Any]:
    """The worker's retrain on 10,000 items: a cold fit on 500 labels, then the timed warm one on 550."""
    from ml.steps import fit_lens

    attrs = [a.to_dict() for a in _attributes()]
    n = 10_000
    Z = data["Z"][:n]
    labelled = np.flatnonzero(data["labels"]["digit"][:n] >= 0)
    S_cold = {k: np.where(np.isin(np.arange(n), labelled[:-50]), v[:n], -1) for k, v in data["labels"].items()}
    S_warm = {k: v[:n] for k, v in data["labels"].items()}
    t0 = time.perf_counter()
    blob, _ = fit_lens(Z, S_cold, attrs, device=device)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit_lens(Z, S_warm, attrs, warm_start_bytes=blob, device=device)
    return {
        "labels": len(labelled),
        "cold_s": round(cold, 2),
        "cold_target_s": FIRST_FIT_TARGET_S,
        "warm_s": round(time.perf_counter() - t0, 2),
    }


def _scoring(data: dict[str, Any], device: str) -> dict[str, Any]:
    from ml.steps import fit_lens, score_pool

    attrs = [a.to_dict() for a in _attributes()]
    blob, _ = fit_lens(data["Z"][:5000], {k: v[:5000] for k, v in data["labels"].items()}, attrs, device=device)
    rng = np.random.default_rng(0)
    pool = data["Z"][rng.integers(0, len(data["Z"]), SCORE_ITEMS)]
    score_pool(blob, pool[:50_000], device=device)  # warm-up
    t0 = time.perf_counter()
    score_pool(blob, pool, device=device)
    seconds = time.perf_counter() - t0
    return {"items": SCORE_ITEMS, "seconds": round(seconds, 2), "items_per_s": round(SCORE_ITEMS / seconds)}


def run(data_dir: str | Path, device: str = "cpu", out_dir: str | Path = "benchmarks/results") -> dict[str, Any]:
    """Measure everything above on ``device``; print a table and write ``train_lens_<device>.json``."""
    import torch

    from ml.device import resolve_device
    from ml.lens.config import LensConfig

    dev = resolve_device(device)
    data = mnist_pca_z(data_dir)
    steps = {name: _step_counts(data, dev, fused) for name, fused in (("fused", True), ("eager", False))}
    fits = {name: _cold_fit(data, dev, fused) for name, fused in (("fused", True), ("eager", False))}
    warm = _warm_retrain(data, str(dev))
    scoring = _scoring(data, str(dev))
    rows = []
    for name in ("eager", "fused"):
        s, f = steps[name], fits[name]
        rows.append(
            {
                "step": name,
                "ms/step": s["ms_per_step"],
                "aten ops/step": s["aten_ops_per_step"],
                "host reads/step": s["host_reads_per_step"],
                **(
                    {"launches/step": s["kernel_launches_per_step"], "syncs/step": s["synchronisations_per_step"]}
                    if dev.type == "cuda"
                    else {}
                ),
                "cold fit 60k (s)": f["seconds"],
                "s/epoch": f["seconds_per_epoch"],
                "digit": f["digit"],
                "thickness": f["thickness"],
            }
        )
    payload = {
        "benchmark": "train_lens",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "lens_threads": LensConfig().for_device(dev).threads,  # what a fit trains on (ml.device.sizes_for)
        "machine": machine(),
        "z": "MNIST train, first 10 principal components; 1,000 labelled (digit, thickness in 5 levels)",
        "step": steps,
        "cold_fit": fits,
        "speedup_cold_fit": round(fits["eager"]["seconds"] / fits["fused"]["seconds"], 2),
        "warm_retrain_10k": warm,
        "scoring_1m": scoring,
    }
    path = write_results(f"train_lens_{dev.type}", payload, out_dir)
    print(table(rows, list(rows[0])))
    print(
        f"\ncold fit speed-up fused/eager: {payload['speedup_cold_fit']}×; on 10k items, the first (cold) fit "
        f"{warm['cold_s']} s (target ≤ {FIRST_FIT_TARGET_S:g} s) and the warm retrain {warm['warm_s']} s; "
        f"scoring 1M items: {scoring['items_per_s']:,} items/s; the lens trains on {payload['lens_threads']} thread(s)"
    )
    print(f"wrote {path}")
    return payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    run(args.data_dir, args.device, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
