"""The `homec` command line: argument parsing, files, printing and exit codes; no logic of its own.

    homec MODEL [-o OUT] [-q]                              compile MODEL (the main job)
    homec inspect MODEL [--json] [--input-shape NAME=DIMS]...
    homec --version

The first argument picks a subcommand from COMMANDS; anything else is the main job. (A model
file named like a subcommand is reached as `homec ./inspect`.)

Errors: a `HomecError` prints `homec: error: <message>` on one line and exits with its
exit code; any other exception is an internal error (exit 70). With HOMEC_DEBUG=1 the
traceback is printed too. Ctrl-C exits 130 quietly; argparse usage errors exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from homec import __version__
from homec.errors import ExitCode, HomecError, OutputError, UsageError

PROG = "homec"
OUTPUT_SUFFIX = ".homec.onnx"


# ---------------------------------------------------------------------------------------
# Entry point and error handling
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except SystemExit as e:  # argparse: --help, --version (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (`homec inspect m.onnx | head`): stop quietly.
        _silence_stdout()
        return int(ExitCode.OK)
    except HomecError as e:
        if e.exit_code == ExitCode.INTERNAL:  # e.g. IRError: a bug, not the user's doing
            return _internal_error(e)
        if _debug():
            traceback.print_exc()
        _print_err(f"{PROG}: error: {_one_line(str(e))}")
        return int(e.exit_code)
    except Exception as e:  # noqa: BLE001 — the last line of defence
        return _internal_error(e)


def _internal_error(e: BaseException) -> int:
    if _debug():
        traceback.print_exc()
        hint = ""
    else:
        hint = " (rerun with HOMEC_DEBUG=1 for a traceback)"
    _print_err(f"{PROG}: internal error: {type(e).__name__}: {_one_line(str(e))}{hint}")
    return int(ExitCode.INTERNAL)


def _debug() -> bool:
    return os.environ.get("HOMEC_DEBUG", "") not in ("", "0")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _print_err(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: `homec NAME ...`."""

    name: str
    summary: str
    build_parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        cmd = COMMANDS[argv[0]]
        return cmd.run(cmd.build_parser().parse_args(argv[1:]))
    return run_compile(build_compile_parser().parse_args(argv))


def _commands_epilog() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["commands (run `homec COMMAND -h` for their options):"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += ["", "exit codes: 0 ok, 2 usage or schedule error, 3 invalid or unsafe model,",
              "  4 unsupported feature, 5 verification failed, 6 resource limit,",
              "  7 output I/O error, 70 internal error, 130 interrupted"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The main job: homec MODEL
# ---------------------------------------------------------------------------------------


def build_compile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compile an ONNX model for a home-appliance target and write the result.",
        epilog=_commands_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="the ONNX model to compile")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_output_arguments(p.add_argument_group("output"))
    return p


def _add_output_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("-o", "--output", metavar="OUT",
                   help=f"where to write the compiled model (default: <stem>{OUTPUT_SUFFIX} "
                        "beside MODEL); never the input file itself")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success")


def default_output_path(model_path: str) -> str:
    """`dir/name.onnx` -> `dir/name.homec.onnx` (beside the input)."""
    directory, name = os.path.split(model_path)
    stem = name[: -len(".onnx")] if name.lower().endswith(".onnx") else name
    return os.path.join(directory, stem + OUTPUT_SUFFIX)


def _check_output_path(model_path: str, out_path: str) -> None:
    """Refuse to overwrite the input; fail early (before compiling) on an unwritable place."""
    if os.path.exists(out_path):
        try:
            same = os.path.samefile(out_path, model_path)
        except OSError:
            same = False
        if same:
            raise UsageError(f"output {out_path!r} is the input model; choose another path with -o")
        if os.path.isdir(out_path):
            raise OutputError("is a directory; give a file name with -o", path=out_path)
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise OutputError(f"output folder {directory!r} does not exist", path=out_path)


def run_compile(args: argparse.Namespace) -> int:
    import homec
    from homec.analysis.cost import count_params

    graph = homec.load(args.model)
    out_path = args.output if args.output else default_output_path(args.model)
    _check_output_path(args.model, out_path)
    # (no passes exist yet: the model is emitted as loaded)
    homec.save(graph, out_path)
    if not args.quiet:
        _print_compile_summary(args.model, out_path, len(graph), count_params(graph).count)
    return int(ExitCode.OK)


def _print_compile_summary(model_path: str, out_path: str, nodes: int, params: int) -> None:
    print(f"{PROG}: {model_path} -> {out_path}")
    print(f"  nodes       {nodes:,}")
    print(f"  parameters  {params:,}")
    print(f"  file size   {_human_bytes(_file_size(model_path))} -> "
          f"{_human_bytes(_file_size(out_path))}")


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------
# homec inspect MODEL
# ---------------------------------------------------------------------------------------


def build_inspect_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} inspect",
        description="Summarize a model: inputs, outputs, operators, parameters and shapes.",
    )
    p.add_argument("model", metavar="MODEL", help="the ONNX model to inspect")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--input-shape", metavar="NAME=DIMS", action="append", default=[],
                   help="fix the shape of a graph input for shape inference, e.g. "
                        "mfcc=1x1x49x10 or mfcc=1,1,49,10 (repeat for each input)")
    return p


def run_inspect(args: argparse.Namespace) -> int:
    import homec
    from homec.analysis.shapes import parse_input_shapes
    from homec.analysis.summary import format_inspect, inspect_graph

    shapes = parse_input_shapes(args.input_shape) if args.input_shape else None
    graph = homec.load(args.model)
    summary = inspect_graph(graph, input_shapes=shapes)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_inspect(summary))
    return int(ExitCode.OK)


# ---------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "inspect": Command("inspect", "summarize a model (inputs, outputs, operators, parameters)",
                       build_inspect_parser, run_inspect),
}


if __name__ == "__main__":
    sys.exit(main())
