"""The lenslab command line: interpretable lenses on existing models, with experts in the loop.

Each command group lives in ``app/commands/<group>.py`` and
exposes ``register(subparsers)``; handlers import heavy modules lazily so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "app.commands.demo",
    "app.commands.serve",
    "app.commands.worker",
    "app.commands.db",
    "app.commands.users",
    "app.commands.tokens",
    "app.commands.bench",
    "app.commands.experiment",
)


class CommandError(Exception):
    """A user error: printed as ``error: ...`` with exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lenslab", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (CommandError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
