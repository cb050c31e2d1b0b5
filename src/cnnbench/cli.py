"""The ``cnnbench`` command: builds the parser from ``cnnbench.commands`` and dispatches.

Each command group lives in its own module under ``cnnbench/commands/`` and exposes
``register(subparsers)``; it parses arguments, calls one library function and prints. Heavy
imports (torch) happen inside the handlers so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cnnbench import __version__
from cnnbench.errors import CnnbenchError

# Command groups in pipeline order; each module exposes register(subparsers).
COMMAND_MODULES = ["data", "models", "train", "evaluate", "report", "study", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnbench",
        description="Train, evaluate and compare image classifiers on Tiny ImageNet, CIFAR-10 and MNIST.",
    )
    parser.add_argument("--version", action="version", version=f"cnnbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cnnbench.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cnnbench.commands.{name}":
                continue  # group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except CnnbenchError as exc:
        print(f"cnnbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cnnbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cnnbench models list | head`: the reader left; no traceback for that
        # Python flushes stdout again at exit: point it at devnull so that flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
