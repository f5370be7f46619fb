"""`kfac-ext` command line: one subcommand per job, each in its own module.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``
(its docstring is the help text). It is imported only when asked for, so
``kfac-ext place`` never loads the K-FAC code.

Errors: every error a user can cause is one line on stderr and a non-zero exit
(2 for a bad argument or input file, 1 for a run that failed on its own), never
a traceback. "A user can cause" means ``ValueError`` (every argument check
raises one), ``OSError`` (files and folders) and the types a subcommand lists
in ``EXPECTED_ERRORS`` (e.g. a bad checkpoint). Anything else (``TypeError``,
``IndexError``, ``KeyError``, ...) is a bug in kfac_ext and keeps its traceback,
so it can be reported and fixed rather than hidden behind a line. Ctrl-C prints
one line (the subcommand's ``interrupted_message(args)`` if it has one) and
exits 130, the shell's code for SIGINT (``train`` treats SIGTERM the same way
and exits 143).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn


# Each subcommand's module is imported when that subcommand runs, by a static
# import (so the import graph and the type checker see it), never by name.
def _train() -> ModuleType:
    from kfac_ext.app import train

    return train


def _place() -> ModuleType:
    from kfac_ext.placement import cli

    return cli


def _pipeline() -> ModuleType:
    from kfac_ext.placement import pipeline_cli

    return pipeline_cli


def _bench() -> ModuleType:
    from kfac_ext.app import bench

    return bench


SUBCOMMANDS: dict[str, Callable[[], ModuleType]] = {
    "train": _train,
    "place": _place,
    "pipeline": _pipeline,
    "bench": _bench,
}

# The optional dependencies of each subcommand, by setup.py extra. The modules in
# the third column are needed by every run, so they are checked before any work;
# the others only by some options (kfac-ext place --method milp needs highspy).
EXTRAS = {
    "train": ("app", ("tqdm", "matplotlib", "sklearn"), ("tqdm", "matplotlib", "sklearn")),
    "bench": ("app", ("matplotlib",), ("matplotlib",)),
    "place": ("placement", ("highspy", "matplotlib"), ()),
    "pipeline": ("placement", (), ()),
}


def _needs_extra(name: str, module: str) -> str:
    extra = EXTRAS[name][0]
    return (
        f"kfac-ext {name}: needs the [{extra}] extra ({module!r} is not installed): "
        f"pip install -e '.[{extra}]' --no-build-isolation"
    )


def _missing_upfront(name: str) -> str | None:
    for module in EXTRAS[name][2]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _usage() -> str:
    lines = ["usage: kfac-ext {" + ",".join(SUBCOMMANDS) + "} [options]", ""]
    lines += [f"  kfac-ext {name} --help" for name in SUBCOMMANDS]
    return "\n".join(lines)


# Bad input from the user: the file or argument is wrong, not the run.
_USAGE_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a C tool piped into `head` exits with


class _UsageError(Exception):
    """argparse's complaint, raised instead of its multi-line usage dump."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the whole usage block
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, OSError) and not isinstance(exc, _USAGE_OS_ERRORS):
        return 1  # e.g. disk full while writing: the arguments were fine
    if isinstance(exc, ArithmeticError):
        return 1  # e.g. the loss diverged
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"kfac-ext: unknown command {name!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    prog = f"kfac-ext {name}"
    missing = None if {"-h", "--help"} & set(argv[1:]) else _missing_upfront(name)
    if missing is not None:  # before any work: the extra is needed by every run
        print(_needs_extra(name, missing), file=sys.stderr)
        return 2
    args = None
    module: ModuleType | None = None
    try:
        module = SUBCOMMANDS[name]()
        parser = _Parser(prog=prog, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        expected = (ValueError, OSError) + tuple(getattr(module, "EXPECTED_ERRORS", ()))
        try:
            args = parser.parse_args(argv[1:])
            return int(module.run(args) or 0)
        except BrokenPipeError:
            # The reader left (`kfac-ext ... | head`): nobody to tell. Point stdout at
            # /dev/null so the flush at exit does not raise a second time.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except expected as exc:
            print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
            return _exit_code(exc)
        except ModuleNotFoundError as exc:  # an extra that only some options need
            root = (exc.name or "").split(".")[0]
            if root not in EXTRAS[name][1]:
                raise
            print(_needs_extra(name, root), file=sys.stderr)
            return 2
    except _UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        hint = getattr(module, "interrupted_message", None)
        message = hint(args) if hint is not None and args is not None else "interrupted"
        print(f"{prog}: {message}", file=sys.stderr)
        # 143 for a SIGTERM that `train` turned into an interrupt (kfac_ext.app.checkpoint)
        return getattr(exc, "exit_code", EXIT_INTERRUPTED)
