"""Entry point: builds the argument parser from one module per command and runs it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sdplay.errors import SdplayError

# One module per command under sdplay.cli; each exposes `register(subparsers)`,
# which adds its parser and sets `func(args) -> int`.
COMMANDS = ["generate", "models", "devices", "info", "monitor", "serve", "bench", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdplay", description="Text-to-image with Stable Diffusion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens, and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sdplay.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _main(argv, program=False)[1]


def entry() -> None:
    """The `sdplay` program: main(), then exit.

    After a generation on sdplay.light (torch's modules and the model in memory, no thread or child process of
    any library left), the interpreter's teardown is skipped: freeing its million-odd objects one by one took
    0.4-0.8 s of CPU, a fifth of `sdplay generate "red heart"`. Output is flushed first.
    """
    args, status = _main(None, program=True)
    if getattr(args, "skip_teardown", False):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _main(argv: list[str] | None, program: bool) -> tuple[argparse.Namespace | None, int]:
    """Parse and run; `program`: this process is the `sdplay` program, which ends when the command does (a
    command may then skip work meant for long-lived processes: sdplay.cli.generate)."""
    from sdplay.cli.common import openmp_waiting, quiet_libraries

    if "-v" not in (argv or sys.argv) and "--verbose" not in (argv or sys.argv):
        quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    openmp_waiting(getattr(args, "command", None) if program else None)  # before torch loads
    args.program = program
    if not getattr(args, "func", None):
        parser.print_help()
        return args, 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return args, run_command(args.func, args, verbose=args.verbose)


def run_command(func, args: argparse.Namespace, *, verbose: bool = False) -> int:
    """Run one command; user errors become one line and exit 2, never a traceback."""
    try:
        return int(func(args) or 0)
    except SdplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.status < 500 else 1
    except ModuleNotFoundError as exc:  # an optional part not installed: say which, and the command that adds it
        from sdplay.extras import missing_extra

        if verbose:
            raise
        error = missing_extra(exc, getattr(args, "command", None))
        print(f"error: {error or f'{type(exc).__name__}: {exc} (run with -v for the traceback)'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: say so briefly unless asked for detail
        if verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    entry()
