"""The lens's training step never waits for the device: no ``.item()``, ``float()`` or ``bool()`` of a
tensor and no data-dependent Python branch per step (counted on the CPU with ``torch.profiler``)."""

from __future__ import annotations

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from ml.attributes import Attribute
from ml.lens.config import LensConfig
from ml.lens.train import train

ATTRS = [
    Attribute("digit", "categorical", tuple(str(i) for i in range(10))),
    Attribute("thick", "ordinal", tuple("abcde")),
]


def _syncs_outside_the_optimizer(epochs: int) -> int:
    rng = np.random.default_rng(0)
    n = 1280  # 5 steps of 256 per epoch
    Z = rng.normal(size=(n, 6)).astype(np.float32)
    y, t = rng.integers(0, 10, n), rng.integers(0, 5, n)
    y[200:], t[300:] = -1, -1
    cfg = LensConfig(epochs=epochs, batch_size=256, n_flows=8, hidden=32, propagation_weight=0.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(Z, {"digit": y, "thick": t}, ATTRS, cfg, device=torch.device("cpu"))
    count = 0
    for e in prof.events():
        if e.name != "aten::_local_scalar_dense":
            continue
        p, names = e.cpu_parent, []
        while p is not None:
            names.append(p.name)
            p = p.cpu_parent
        # Adam's step counters: host memory on the CPU; on CUDA the fused, capturable kernel keeps them on
        # the device (ml.lens.train.make_adam), so they are not a round trip there.
        if not any("Optimizer.step" in x or "fused_adam" in x for x in names):
            count += 1
    return count


def test_a_training_step_reads_nothing_back_from_the_device():
    # Measured: 1 read per epoch (the epoch's loss) and 1 at the end. Before, each step read 8 flows'
    # branch conditions twice, the one-hot range checks and the loss: about 100 reads per step.
    one, three = _syncs_outside_the_optimizer(1), _syncs_outside_the_optimizer(3)
    assert three - one <= 2  # 10 more steps cost only the two more epochs' loss reads
    assert one <= 2
