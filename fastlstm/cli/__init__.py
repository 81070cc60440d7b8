"""The ``fastlstm`` command line: ``fastlstm <command> [options]``.

Each command lives in its own module, which provides

* ``DESCRIPTION``: a paragraph for the command's ``--help``;
* ``add_arguments(parser)``: its options, on an ``argparse`` parser;
* ``run(args) -> int``: the command itself, returning the exit status.

and is listed once in :data:`COMMANDS`.  A module is imported only when its
command is parsed, so ``fastlstm --help`` stays fast and ``import fastlstm``
never imports the CLI.  Errors are reported as one line on stderr with exit
status 2 (usage) or 1 (failure), never as a traceback: commands raise
:class:`CLIError` for that.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, NamedTuple, NoReturn, Optional, Sequence

__all__ = ["CLIError", "COMMANDS", "main", "build_parser", "file_error", "one_line"]


class CLIError(Exception):
    """An error to report as one line on stderr, with exit status ``status``."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: object) -> str:
    """``str(text)`` with every run of whitespace (newlines too) made one space, and other
    characters that do not print (a file's ESC sequences could rewrite the terminal)
    escaped as Python writes them."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in " ".join(str(text).split()))


def file_error(command: str, path: str, exc: BaseException, *, output: bool = False) -> str:
    """The one-line message of a file that could not be read or (``output``) written."""
    if isinstance(exc, FileNotFoundError) and not (
            output and os.path.isdir(os.path.dirname(os.path.abspath(path)))):
        # A file being written is missing when its folder is (not in /proc, say).
        reason = "the output's directory does not exist" if output else "no such file"
    elif isinstance(exc, IsADirectoryError):
        reason = "is a directory"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    elif isinstance(exc, OSError):
        reason = exc.strerror or one_line(exc)
    else:
        reason = f"{type(exc).__name__}: {one_line(exc)}"
    return f"fastlstm {command}: error: {path}: {reason}"


class Command(NamedTuple):
    name: str
    module: str
    summary: str


#: The subcommands, in the order ``fastlstm --help`` lists them.  To add one,
#: write its module and add a line.
COMMANDS: List[Command] = [
    Command("bench", "fastlstm._bench.command",
            "time fastlstm against torch.nn.LSTM and ONNX Runtime"),
    Command("info", "fastlstm.cli.info",
            "print the build's configuration (version, SIMD, OpenMP, threads, BLAS)"),
    Command("inspect", "fastlstm.cli.inspect",
            "list the LSTMs and LSTMCells in a weights file (no PyTorch needed)"),
    Command("convert", "fastlstm.cli.convert",
            "rewrite a weights file as safetensors or .npz (no PyTorch needed)"),
]


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors raise :class:`CLIError` (one line, status 2)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{self.prog}: error: {message}", 2)


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of ``fastlstm`` and its subcommands.

    Parameters
    ----------
    only : str, optional
        Import and configure only this command's module (the others get a
        bare subparser, enough for ``fastlstm --help``).
    """
    from fastlstm._version import __version__

    parser = _Parser(
        prog="fastlstm",
        description="fastlstm: a fast CPU LSTM for inference, a drop-in for torch.nn.LSTM.",
        epilog="Run 'fastlstm COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in COMMANDS:
        if only is not None and command.name != only:
            sub.add_parser(command.name, help=command.summary)
            continue
        module = importlib.import_module(command.module)
        cmd_parser = sub.add_parser(
            command.name, help=command.summary, description=module.DESCRIPTION,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd_parser)
        cmd_parser.set_defaults(_run=module.run)
    return parser


def _command_of(argv: Sequence[str]) -> Optional[str]:
    names = {c.name for c in COMMANDS}
    for arg in argv:
        if arg in names:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``fastlstm`` with ``argv`` (default ``sys.argv[1:]``).

    Parameters
    ----------
    argv : sequence of str, optional

    Returns
    -------
    int
        The exit status: 0 on success, 1 on a failure (e.g. a benchmark case
        whose result disagrees with torch, a file that cannot be read), 2 on a
        usage error, 130 when interrupted.  Every error is one line on stderr;
        an unexpected exception too (``FASTLSTM_TRACEBACK=1`` shows its
        traceback instead).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(only=_command_of(argv))
        try:
            args = parser.parse_args(argv)
        except SystemExit as stop:  # --help and --version
            return int(stop.code or 0)
        if getattr(args, "_run", None) is None:
            raise CLIError("fastlstm: error: a command is required "
                           "('fastlstm --help' lists them)", 2)
        args._argv = argv
        return int(args._run(args))
    except CLIError as err:
        print(one_line(err), file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print("fastlstm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'fastlstm bench | head'
        # What is left in stdout's buffer would fail again when Python flushes it at exit
        # (exit status 120 and a message): stdout goes to /dev/null instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        if os.environ.get("FASTLSTM_TRACEBACK", "").strip() == "1":
            raise
        print(f"fastlstm: error: {type(exc).__name__}: {one_line(exc)} "
              "(set FASTLSTM_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
