"""Re-measure the spread behind every learned-quality bound: the quality tests over seeds × threads.

    python -m tests.quality_spread [--seeds 0 1 2 3 4] [--threads 1 2] [-k EXPR] [--out FILE]

Each configuration runs ``pytest -m quality`` in a fresh process with ``LENSLAB_TEST_SEED`` and
``LENSLAB_TEST_THREADS`` set; the table gives each check's min / median / max against its bound.
A configuration's failures are reported, not hidden: the table is what the bounds are chosen from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("-k", default=None, help="pytest -k expression to run a subset")
    ap.add_argument("--out", default=None, help="also write the raw measurements (JSON Lines) here")
    args = ap.parse_args(argv)
    log = Path(args.out) if args.out else Path(tempfile.mkstemp(suffix=".jsonl")[1])
    log.write_text("")
    failed: list[str] = []
    for threads in args.threads:
        for seed in args.seeds:
            env = {
                **os.environ,
                "LENSLAB_TEST_SEED": str(seed),
                "LENSLAB_TEST_THREADS": str(threads),
                "LENSLAB_QUALITY_LOG": str(log),
                "OMP_NUM_THREADS": str(threads),
            }
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-rf",
                "-m",
                "quality",
                "-p",
                "no:cacheprovider",
                "--no-header",
            ]
            if args.k:
                cmd += ["-k", args.k]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
            print(f"seed {seed}, threads {threads}: {summary}", flush=True)
            if out.returncode != 0:
                names = [line.split(" - ")[0] for line in out.stdout.splitlines() if line.startswith("FAILED ")]
                failed.append(f"seed {seed} threads {threads}: {summary}" + "".join(f"\n    {n}" for n in names))
    rows: dict[str, list[dict]] = defaultdict(list)
    for line in log.read_text().splitlines():
        r = json.loads(line)
        rows[r["check"]].append(r)
    width = max((len(k) for k in rows), default=5)
    print(f"\n{'check':<{width}}  {'n':>3}  {'min':>9}  {'median':>9}  {'max':>9}  bound")
    for name in sorted(rows):
        vals = [r["value"] for r in rows[name]]
        r0 = rows[name][0]
        print(
            f"{name:<{width}}  {len(vals):>3}  {min(vals):>9.4g}  {statistics.median(vals):>9.4g}  "
            f"{max(vals):>9.4g}  {r0['kind']} {r0['bound']:.4g}"
        )
    print(f"\nraw measurements: {log}")
    for f in failed:
        print("FAILED:", f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
