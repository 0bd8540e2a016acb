"""Data-preparation throughput: procedural sprites and stroke thickness (Morpho-MNIST's measure).

These were wall-time assertions in the tests; a shared 2-core machine makes such asserts flaky, so
they are measured here, printed as a table and written to JSON with the machine and commit.
Targets: 5,000 sprites in < 2 s; the thickness of 1,000 MNIST digits in < 5 s (scikit-image's
medial_axis alone takes about 15 ms an image, so 1,000 would take 15 s without the cached tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.bench.common import best_of, machine, table, write_results

TARGETS_S = {"make_shapes(5000)": 2.0, "stroke_thickness(1000 MNIST)": 5.0}


def run(*, data_dir: str = "../shared/data", repeats: int = 3, out_dir: str = "benchmarks/results") -> dict[str, Any]:
    """Time each step (best of ``repeats``), print the table and write ``data.json``."""
    from ml import data

    rows = []
    shapes_s, _ = best_of(repeats, lambda: data.make_shapes(5000, seed=0))
    rows.append({"step": "make_shapes(5000)", "seconds": round(shapes_s, 3), "items_per_s": round(5000 / shapes_s)})
    mnist = Path(data_dir) / "mnist"
    if (mnist / "t10k-images-idx3-ubyte.gz").is_file():
        images = data.load_mnist(mnist, split="test").images[:1000]
        thick_s, _ = best_of(repeats, lambda: data.stroke_thickness(images))
        rows.append(
            {"step": "stroke_thickness(1000 MNIST)", "seconds": round(thick_s, 3), "items_per_s": round(1000 / thick_s)}
        )
    else:
        print(f"no MNIST under {mnist}: stroke thickness not measured")
    for r in rows:
        r["target_s"] = TARGETS_S[r["step"]]
        r["met"] = r["seconds"] < r["target_s"]
    print(table(rows, ["step", "seconds", "items_per_s", "target_s", "met"]))
    payload = {"benchmark": "data", "repeats": repeats, "results": rows, "machine": machine()}
    path = write_results("data", payload, out_dir)
    print(f"wrote {path}")
    return payload
