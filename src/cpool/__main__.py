"""The ``cpool`` command (also ``python -m cpool``).

Each command lives in its own module, whose ``register(subparsers)`` adds a subparser and
sets ``run`` (a function of the parsed arguments returning the exit status). Adding a
command is adding its ``register`` to COMMANDS.
"""
import argparse
import sys

from . import __version__, demo
from .onnx import cli as onnx_cli

COMMANDS = [demo.register, onnx_cli.register]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="cpool", description="Fast, exact neural-network pooling for NumPy.")
    parser.add_argument("--version", action="version", version=f"cpool {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
