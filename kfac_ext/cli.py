"""`kfac-ext` command line: one subcommand per job, each in its own module.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``
(its docstring is the help text). It is imported only when asked for, so
``kfac-ext place`` never loads the K-FAC code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "train": "kfac_ext.app.train",
    "place": "kfac_ext.placement.cli",
    "bench": "kfac_ext.app.bench",
}


def _usage() -> str:
    lines = ["usage: kfac-ext {" + ",".join(SUBCOMMANDS) + "} [options]", ""]
    lines += [f"  kfac-ext {name} --help" for name in SUBCOMMANDS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"kfac-ext: unknown command {name!r}; choose one of {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name])
    parser = argparse.ArgumentParser(prog=f"kfac-ext {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)
