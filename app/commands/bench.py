"""``lenslab bench …``: benchmarks that print a table and write JSON under ``benchmarks/results/``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (printed table + JSON under benchmarks/results/)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)

    s = bsub.add_parser("scoring", help="BALD pool scoring throughput (items/s, 1 thread and all) and peak RSS")
    s.add_argument("--n", type=int, default=100_000, help="pool size for the throughput runs")
    s.add_argument("--rss-n", type=int, default=1_000_000, help="pool size for the peak-RSS run")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--out-dir", default="benchmarks/results")
    s.add_argument("--data-dir", default=None, help="folder holding mnist/: adds the served scores' rank stability")
    s.set_defaults(func=_scoring)

    a = bsub.add_parser("api", help="p50/p99 latency of queue/next and label submit under concurrent clients")
    a.add_argument("--clients", type=int, default=32)
    a.add_argument("--rounds", type=int, default=40)
    a.add_argument(
        "--think-ms",
        type=float,
        default=1000.0,
        help="mean pause between an expert's labels (0 = closed loop at saturation)",
    )
    a.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="client phases against one server; the target is judged on the median phase's p99 (default 3)",
    )
    a.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    a.add_argument("--out", default="benchmarks/results/api.json")
    a.set_defaults(func=_api)

    ld = bsub.add_parser(
        "load", help="experts pull/label/skip/undo while retrains run; p50/p99, errors, reconciliation"
    )
    ld.add_argument("--experts", type=int, default=50)
    ld.add_argument("--seconds", type=float, default=60.0)
    ld.add_argument("--think-ms", type=float, default=1000.0, help="mean pause between pulling an item and acting")
    ld.add_argument("--retrain-every", type=int, default=150, help="new training labels per retrain")
    ld.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    ld.add_argument("--overlap", type=int, default=1, help="experts per item; > 1 runs until the pool is done")
    ld.add_argument("--items", type=int, default=None, help="pool size (default: enough for the run)")
    ld.add_argument("--out", default=None, help="default: benchmarks/results/load_<database>.json")
    ld.set_defaults(func=_load)

    dt = bsub.add_parser("data", help="throughput of sprite generation and stroke-thickness measurement")
    dt.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/ (for thickness)")
    dt.add_argument("--repeats", type=int, default=3)
    dt.add_argument("--out-dir", default="benchmarks/results")
    dt.set_defaults(func=_data)

    t = bsub.add_parser("train", help="wall time of pretrain (digits VAE, CPU) and of a warm-started retrain")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    t.add_argument("--out", default="benchmarks/results/train.json")
    t.add_argument(
        "--data-dir",
        default=None,
        help="folder holding mnist/: adds the MNIST pretrain and the lens step and fits (train_lens_<device>.json)",
    )
    t.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the MNIST part (default cpu)")
    t.set_defaults(func=_train)

    ex = bsub.add_parser(
        "export", help="streaming export of a large pool (items/s, added server memory) and bulk transform"
    )
    ex.add_argument("--n", type=int, default=1_000_000, help="pool size (embeddings)")
    ex.add_argument("--transform-n", type=int, default=10_000, help="embeddings per transform request (≤ 10,000)")
    ex.add_argument("--repeats", type=int, default=3)
    ex.add_argument("--out", default="benchmarks/results/export.json")
    ex.set_defaults(func=_export)

    an = bsub.add_parser(
        "annotators", help="nine experts of different noise, three per image: consensus targets vs last-write-wins"
    )
    an.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/")
    an.add_argument("--seeds", type=int, default=3)
    an.add_argument("--out-dir", default="benchmarks/results")
    an.set_defaults(func=_annotators)

    aa = bsub.add_parser(
        "attribute-added", help="an attribute added mid-project: the old attribute's score before and after"
    )
    aa.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/")
    aa.add_argument("--seeds", type=int, default=3)
    aa.add_argument("--out-dir", default="benchmarks/results")
    aa.set_defaults(func=_attribute_added)

    _register_al(bsub)


def _register_al(bsub: argparse._SubParsersAction) -> None:
    al = bsub.add_parser(
        "al", help="simulated experts label MNIST through the REST API; the served score after every retrain"
    )
    al.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/")
    al.add_argument("--seeds", type=int, default=3, help="base representations (one VAE per seed), paired")
    al.add_argument("--strategies", default="random", help="comma-separated project strategies")
    al.add_argument("--pool", type=int, default=5000, help="MNIST test images the experts label from")
    al.add_argument("--eval", type=int, default=1000, help="further test images with eval labels")
    al.add_argument("--labels", type=int, default=300, help="training labels per run")
    al.add_argument("--retrain-every", type=int, default=50, help="labels per round (one retrain each)")
    al.add_argument("--experts", type=int, default=1, help="concurrent simulated experts")
    al.add_argument("--base-epochs", type=int, default=10, help="epochs of each seed's base VAE")
    al.add_argument("--lens", default=None, help="project lens settings as JSON (default: the product's)")
    al.add_argument("--cache-dir", default="benchmarks/cache", help="where the base representations are kept")
    al.add_argument("--out", default="benchmarks/results/al.json")
    al.set_defaults(func=_al)


def _al(args: argparse.Namespace) -> int:
    import json

    from app.bench.al import run_al_bench
    from ml.strategies import QUEUE_STRATEGIES as STRATEGIES

    for name in ("seeds", "pool", "eval", "labels", "retrain_every", "experts", "base_epochs"):
        _positive(name.replace("_", "-"), getattr(args, name))
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if not strategies or unknown:
        raise ValueError(f"--strategies: unknown {unknown or strategies}; choose from {list(STRATEGIES)}")
    try:
        lens = json.loads(args.lens) if args.lens else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--lens must be a JSON object, got {args.lens!r} ({exc})") from None
    run_al_bench(
        data_dir=Path(args.data_dir),
        seeds=args.seeds,
        strategies=strategies,
        n_pool=args.pool,
        n_eval=args.eval,
        labels=args.labels,
        retrain_every=args.retrain_every,
        experts=args.experts,
        base_epochs=args.base_epochs,
        cache_dir=Path(args.cache_dir),
        lens=lens,
        out=Path(args.out),
    )
    return 0


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"--{name} must be ≥ 1, got {value}")


def _scoring(args: argparse.Namespace) -> int:
    from ml.bench.scoring import run

    _positive("n", args.n)
    _positive("rss-n", args.rss_n)
    _positive("repeats", args.repeats)
    if args.data_dir is not None and not (Path(args.data_dir) / "mnist").is_dir():
        raise SystemExit(f"--data-dir: {args.data_dir!r} holds no mnist/ folder")
    run(n=args.n, rss_n=args.rss_n, repeats=args.repeats, out_dir=args.out_dir, data_dir=args.data_dir)
    return 0


def _export(args: argparse.Namespace) -> int:
    from app.bench.export import run_export_bench

    _positive("n", args.n)
    _positive("repeats", args.repeats)
    if not 1 <= args.transform_n <= min(10_000, args.n):
        raise ValueError(f"--transform-n must be in [1, min(10000, --n)], got {args.transform_n}")
    if args.n < 1000:
        raise ValueError(f"--n must be ≥ 1000 (the project holds 700 labels), got {args.n}")
    result = run_export_bench(n=args.n, transform_n=args.transform_n, repeats=args.repeats, out=Path(args.out))
    return 0 if result["ok"] else 1


def _annotators(args: argparse.Namespace) -> int:
    from ml.bench.annotators import run

    _positive("seeds", args.seeds)
    if not (Path(args.data_dir) / "mnist").is_dir():
        raise SystemExit(f"--data-dir: {args.data_dir!r} holds no mnist/ folder")
    run(data_dir=args.data_dir, seeds=args.seeds, out_dir=args.out_dir)
    return 0


def _attribute_added(args: argparse.Namespace) -> int:
    from ml.bench.attribute_added import run

    _positive("seeds", args.seeds)
    if not (Path(args.data_dir) / "mnist").is_dir():
        raise SystemExit(f"--data-dir: {args.data_dir!r} holds no mnist/ folder")
    run(data_dir=args.data_dir, seeds=args.seeds, out_dir=args.out_dir)
    return 0


def _data(args: argparse.Namespace) -> int:
    from ml.bench.data import run

    _positive("repeats", args.repeats)
    run(data_dir=args.data_dir, repeats=args.repeats, out_dir=args.out_dir)
    return 0


def _api(args: argparse.Namespace) -> int:
    from app.bench.api import run_api_bench

    _positive("clients", args.clients)
    _positive("rounds", args.rounds)
    _positive("repeats", args.repeats)
    if args.think_ms < 0:
        raise ValueError(f"--think-ms must be ≥ 0, got {args.think_ms}")
    run_api_bench(
        clients=args.clients,
        rounds=args.rounds,
        think_ms=args.think_ms,
        repeats=args.repeats,
        database_url=args.database_url,
        out=Path(args.out),
    )
    return 0


def _load(args: argparse.Namespace) -> int:
    from app.bench.load import run_load_bench

    _positive("experts", args.experts)
    _positive("retrain-every", args.retrain_every)
    if not 0 < args.seconds <= 3600:
        raise ValueError(f"--seconds must be in (0, 3600], got {args.seconds}")
    if args.think_ms < 0:
        raise ValueError(f"--think-ms must be ≥ 0, got {args.think_ms}")
    _positive("overlap", args.overlap)
    if args.items is not None:
        _positive("items", args.items)
    backend = "postgresql" if args.database_url and args.database_url.startswith("postgres") else "sqlite"
    suffix = f"_overlap{args.overlap}" if args.overlap > 1 else ""
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"load_{backend}{suffix}.json"
    result = run_load_bench(
        overlap=args.overlap,
        n_items=args.items,
        experts=args.experts,
        seconds=args.seconds,
        think_ms=args.think_ms,
        retrain_every=args.retrain_every,
        database_url=args.database_url,
        out=out,
    )
    return 0 if result["reconciled"] else 1


def _train(args: argparse.Namespace) -> int:
    from app.worker.runner import prefer_passive_omp

    prefer_passive_omp()  # as `lenslab worker` does, before torch loads
    from app.bench.train import run_train_bench

    if args.threads is not None:
        _positive("threads", args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is not None and not (data_dir / "mnist").is_dir():
        raise SystemExit(f"--data-dir: {args.data_dir!r} holds no mnist/ folder")
    from ml.device import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"--device: {exc}") from None
    run_train_bench(out=Path(args.out), threads=args.threads, data_dir=data_dir, device=args.device)
    return 0
