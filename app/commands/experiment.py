"""``lenslab experiment NAME``: reproduce the paper's tables and figures (JSON + CSV + PNG, printed table)."""

from __future__ import annotations

import argparse

NAMES = ("al-curve", "table1", "table2", "lens-on-classifier", "label-curve", "alignment", "bases", "report")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="reproduce a paper experiment (al-curve, table1, table2, "
        "lens-on-classifier, label-curve, alignment, bases) or regenerate EXPERIMENTS.md (report)",
    )
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(NAMES)}")
    p.add_argument(
        "--profile", default="quick", help="quick (CI, minutes), cpu (2-core CPU subset) or full (paper scale)"
    )
    p.add_argument("--out", default="benchmarks/experiments", help="directory for results and the model cache")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--data-dir", default="../shared/data", help="folder holding mnist/ (IDX files)")
    p.add_argument("--datasets", default=None, help="comma-separated subset of digits,mnist,shapes")
    p.add_argument(
        "--configs",
        default=None,
        help="label-curve only: comma-separated lens configurations (see ml.experiment.label_curve.CONFIGS)",
    )
    p.add_argument("--labels", default=None, help="label-curve only: comma-separated label counts, e.g. 100,1000")
    p.add_argument(
        "--first-seed",
        type=int,
        default=None,
        help="label-curve only: run seeds FIRST_SEED … FIRST_SEED+SEEDS−1 (default 0)",
    )
    p.add_argument(
        "--strategies",
        default=None,
        help="al-curve only: comma-separated acquisition strategies (default: the profile's; "
        "see ml.experiment.al_curve.ARMS and OPTIONAL)",
    )
    p.add_argument("--markdown", default="EXPERIMENTS.md", help="report only: where to write the markdown")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.name not in NAMES:
        raise ValueError(f"unknown experiment {args.name!r}; choose one of {', '.join(NAMES)}")
    if args.name == "report":
        from ml.experiment.report import write_report

        path = write_report(args.out, args.markdown)
        print(f"wrote {path}")
        return 0
    if args.seeds < 1:
        raise ValueError(f"--seeds must be ≥ 1, got {args.seeds}")
    from ml.experiment import run_experiment
    from ml.experiment.common import check_data_dir

    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip()) if args.datasets else None
    extra: dict[str, object] = {}
    if args.name == "label-curve":
        if args.configs:
            extra["configs"] = tuple(c.strip() for c in args.configs.split(",") if c.strip())
        if args.labels:
            try:
                extra["label_counts"] = tuple(int(n) for n in args.labels.split(",") if n.strip())
            except ValueError:
                raise ValueError(f"--labels must be comma-separated integers, got {args.labels!r}") from None
        if args.first_seed is not None:
            if args.first_seed < 0:
                raise ValueError(f"--first-seed must be ≥ 0, got {args.first_seed}")
            extra["first_seed"] = args.first_seed
    elif args.configs or args.labels or args.first_seed is not None:
        raise ValueError(f"--configs, --labels and --first-seed apply to label-curve only, not {args.name!r}")
    if args.strategies is not None:
        if args.name != "al-curve":
            raise ValueError(f"--strategies applies to al-curve only, not {args.name!r}")
        chosen = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
        if not chosen or len(set(chosen)) != len(chosen):
            raise ValueError(f"--strategies must be distinct, comma-separated names, got {args.strategies!r}")
        extra["strategies"] = chosen
    if datasets is None or "mnist" in datasets:  # after the options: a bad option is named first
        from ml.experiment import EXPERIMENTS

        if datasets is not None or "mnist" in EXPERIMENTS[args.name][1]:
            check_data_dir(args.data_dir)
    run_experiment(
        args.name,
        profile=args.profile,
        out=args.out,
        seeds=args.seeds,
        data_dir=args.data_dir,
        datasets=datasets,
        **extra,
    )
    return 0
