"""The `homec` command line: argument parsing, files, printing and exit codes; no logic of its own.

    homec MODEL [-p SCHEDULE] [-t TARGET] [-o OUT] [--calib PATH] [--input-shape NAME=DIMS]
                [--verify] [--tolerance SPEC] [--report OUT.json] [--stats] [--verify-each]
                [--dump-dir DIR] [--pass-limit N] [--external-data] [-q]
    homec inspect MODEL [--json] [--input-shape NAME=DIMS]...
    homec check SCHEDULE            validate a schedule without a model
    homec fmt SCHEDULE              print a schedule normalized
    homec passes [--json]           list the registered passes with their options
    homec targets [TARGET] [--json] list the built-in targets (or describe one)
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
from homec.report import write_json as _write_json
from homec.report import write_report as _write_report

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
        from homec.pipeline import InternalPassError

        if e.exit_code == ExitCode.INTERNAL and not isinstance(e, InternalPassError):
            return _internal_error(e)  # e.g. IRError: a bug, not the user's doing
        if _debug():
            traceback.print_exc()
        from homec.schedule.ast import ScheduleError

        if isinstance(e, ScheduleError):  # file:line:col: error: ... with the line and a caret
            _print_err(str(e))
        else:
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
    c = p.add_argument_group("compilation")
    c.add_argument("-p", "--schedule", metavar="SCHEDULE",
                   help="schedule file (.hc) saying which passes run in which order "
                        "(default: none, the model is re-emitted as loaded)")
    c.add_argument("-t", "--target", metavar="TARGET",
                   help="appliance target: cpu, npu-int8, mcu (see `homec targets`) or a "
                        ".toml descriptor file (docs/targets.md)")
    c.add_argument("--calib", metavar="PATH",
                   help="calibration data: an .npz (keys = input names, samples stacked on a "
                        "new leading axis) or a folder of .npz files, one sample each")
    c.add_argument("--input-shape", metavar="NAME=DIMS", action="append", default=[],
                   help="fix a dynamic input shape, e.g. x=1x3x224x224 (repeat per input)")
    c.add_argument("--seed", type=int, default=0, help="seed for random verification inputs")
    v = p.add_argument_group("verification and debugging")
    v.add_argument("--verify", action="store_true",
                   help="compare onnxruntime outputs of the input and output models; past the "
                        "tolerance exit 5 and write no output")
    v.add_argument("--tolerance", metavar="SPEC",
                   help="verification tolerance: a number (max abs error) or "
                        "atol=X,rtol=Y,cosine=Z (default: what the passes that ran declare)")
    v.add_argument("--verify-each", action="store_true",
                   help="after every pass: Graph.verify(), the onnx checker and an onnxruntime "
                        "comparison with the previous stage; names the pass that broke it")
    v.add_argument("--dump-dir", metavar="DIR", help="write the model after every pass to DIR")
    v.add_argument("--pass-limit", metavar="N", type=_non_negative_int,
                   help="run only the first N pass invocations (bisection)")
    v.add_argument("--stats", action="store_true", help="print per-pass time and statistics")
    v.add_argument("--report", metavar="OUT.json|OUT.html", action="append", default=[],
                   help="write the report: .json (machine-readable, docs/report.md) or .html "
                        "(one self-contained page with plots); repeat for both")
    v.add_argument("--measure", action="store_true",
                   help="with -t: also measure onnxruntime CPU latency of the input and output "
                        "models (makes the manifest differ from run to run)")
    _add_output_arguments(p.add_argument_group("output"))
    return p


def _non_negative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def parse_tolerance(spec: str):
    """`1e-4` (max abs error) or `atol=1e-4,rtol=1e-3,cosine=0.999`."""
    import math

    from homec.registry import Tolerance

    try:
        return Tolerance(atol=float(spec))
    except ValueError:
        pass
    fields = {"atol": math.inf, "rtol": 0.0, "cosine": None}
    given = set()
    for part in spec.split(","):
        key, sep, val = part.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise UsageError(f"--tolerance: cannot read {part!r}; use a number or "
                             "atol=X,rtol=Y,cosine=Z")
        try:
            fields[key] = float(val)
        except ValueError:
            raise UsageError(f"--tolerance: {key} needs a number, got {val!r}") from None
        given.add(key)
    if "atol" not in given and "rtol" not in given:
        fields["atol"] = math.inf
    elif "atol" not in given:
        fields["atol"] = 0.0
    return Tolerance(atol=fields["atol"], rtol=fields["rtol"], min_cosine=fields["cosine"],
                     lossy=fields["cosine"] is not None or fields["atol"] == math.inf)


def _add_output_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("-o", "--output", metavar="OUT",
                   help=f"where to write the compiled model (default: <stem>{OUTPUT_SUFFIX} "
                        "beside MODEL); never the input file itself")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success")
    g.add_argument("--external-data", action="store_true",
                   help="write weights to <OUT>.data beside the model (automatic over 2 GiB)")
    g.add_argument("--manifest", metavar="PATH",
                   help="with -t: where to write the JSON manifest (placement, memory plan, "
                        "estimates, I/O quantization; default: <OUT stem>.manifest.json)")
    g.add_argument("--depfile", metavar="OUT.d",
                   help="write a Make/Ninja depfile: the output depends on the model, its "
                        "external data, the schedule and its includes, the target file and the "
                        "calibration data")


def default_manifest_path(out_path: str) -> str:
    """`dir/name.onnx` -> `dir/name.manifest.json`."""
    stem = out_path[: -len(".onnx")] if out_path.lower().endswith(".onnx") else out_path
    return stem + ".manifest.json"


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
    from homec.analysis.shapes import parse_input_shapes
    from homec.driver import BUILTIN_TARGETS, load_schedule
    from homec.targets.descriptor import load_target

    out_path = args.output if args.output else default_output_path(args.model)
    _check_output_path(args.model, out_path)
    for path in args.report:
        if not path.lower().endswith((".json", ".html", ".htm")):
            raise UsageError(f"--report {path}: the file name must end in .json or .html")
    if (args.manifest or args.measure) and not args.target:
        raise UsageError(f"{'--manifest' if args.manifest else '--measure'} needs a target (-t)")
    # Validate everything cheap before the model is touched.
    target = load_target(args.target) if args.target else None
    names = BUILTIN_TARGETS + ((target.name,) if target else ())
    schedule = load_schedule(args.schedule, targets=names)[0] if args.schedule else None
    shapes = parse_input_shapes(args.input_shape) if args.input_shape else None
    tolerance = parse_tolerance(args.tolerance) if args.tolerance else None
    progress = _Progress(enabled=not args.quiet and sys.stderr.isatty())
    try:
        result = homec.compile(
            args.model, schedule, target=target, calib=args.calib,
            verify=args.verify, tolerance=tolerance, input_shapes=shapes,
            verify_each=args.verify_each, dump_dir=args.dump_dir, pass_limit=args.pass_limit,
            seed=args.seed, reproducer_dir=os.path.dirname(os.path.abspath(out_path)),
            measure=args.measure, on_pass_start=progress.start, on_pass_end=progress.end)
    except homec.HomecError as e:
        progress.close()
        report = getattr(e, "report", None)
        if report is not None:
            report["error"] = {"exit_code": int(e.exit_code), "message": e.message}
            for path in args.report:
                _write_report(report, path)
        raise
    progress.close()
    homec.save(result.model, out_path, external_data=True if args.external_data else None)
    report = result.report
    report["output"] = out_path
    report["files"] = {"input_bytes": _file_size(args.model), "output_bytes": _file_size(out_path)}
    if target is not None:
        manifest_path = args.manifest or default_manifest_path(out_path)
        manifest = dict(report["manifest"], model=os.path.basename(out_path))
        _write_json(manifest, manifest_path, what="manifest")
        report["manifest_path"] = manifest_path
    for path in args.report:
        _write_report(report, path)
    if args.depfile:
        from homec.depfile import dependencies, write_depfile

        # Only the model is the depfile's target: Ninja refuses a depfile naming an output
        # its rule does not declare, and the manifest is written by the same step anyway.
        write_depfile(args.depfile, [out_path], dependencies(
            model_path=args.model, schedule_path=args.schedule, target=target,
            calib_path=args.calib))
    if args.stats:
        print(format_stats(report))
    if not args.quiet:
        print(format_summary(args.model, out_path, report))
    return int(ExitCode.OK)


class _Progress:
    """A progress bar over pass invocations on a terminal (tqdm); silent otherwise."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=None, unit="pass", file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def start(self, index: int, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{index}: {name}")

    def end(self, record) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_stats(report: dict) -> str:
    """Per-pass time and statistics, one line per invocation."""
    lines = ["  #  pass                      time      nodes        statistics"]
    for r in report["passes"]:
        stats = ", ".join(f"{k}={v}" for k, v in r["stats"].items() if v) or "(no change)"
        sel = f" {r['selector']}" if r["selector"] else ""
        lines.append(f"{r['index']:>3}  {r['name'] + sel:<24} {r['seconds'] * 1000:>7.1f} ms "
                     f"{r['nodes_before']:>5} -> {r['nodes_after']:<5} {stats}")
    if report.get("stopped_by_pass_limit"):
        lines.append(f"  (stopped by --pass-limit after {report['pass_invocations']} invocations)")
    total = sum(r["seconds"] for r in report["passes"])
    lines.append(f"     total {total * 1000:.1f} ms in {len(report['passes'])} pass invocations")
    return "\n".join(lines)


def format_summary(model_path: str, out_path: str, report: dict) -> str:
    b, a = report["before"], report["after"]

    def change(key: str, fmt=lambda v: f"{v:,}") -> str:
        x, y = b.get(key), a.get(key)
        xs = fmt(x) if x is not None else "?"
        ys = fmt(y) if y is not None else "?"
        return f"{xs} -> {ys}"

    files = report.get("files", {})
    lines = [f"{PROG}: {model_path} -> {out_path}"]
    changed = sum(1 for r in report["passes"] if r["modified"])
    if report["passes"]:
        lines.append(f"  passes      {len(report['passes'])} run, {changed} changed the graph")
    lines.append(f"  nodes       {change('nodes')}")
    lines.append(f"  parameters  {change('parameters')}")
    lines.append(f"  MACs        {change('macs')}")
    lines.append(f"  file size   {_human_bytes(files.get('input_bytes'))} -> "
                 f"{_human_bytes(files.get('output_bytes'))}")
    manifest = report.get("manifest")
    if manifest:
        lines.extend(_target_summary(report, manifest))
    ver = report.get("verification")
    if ver:
        worst = max((o["max_abs"] for o in ver["outputs"]), default=0.0)
        cos = min((o["cosine"] for o in ver["outputs"]), default=1.0)
        lines.append(f"  verified    {ver['samples']} {ver['inputs']} input(s): max abs error "
                     f"{worst:.3g}, cosine {cos:.6f}")
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def _target_summary(report: dict, manifest: dict) -> list[str]:
    b, a = report["before"], report["after"]
    tgt, mem, place = manifest["target"], manifest["memory"], manifest["placement"]
    sram = tgt["memory"]["sram_bytes"]
    flash = tgt["memory"]["flash_bytes"]
    lines = [f"  memory      arena {_human_bytes(b.get('arena_bytes'))} -> "
             f"{_human_bytes(a.get('arena_bytes'))}"
             + (f" of {_human_bytes(sram)} SRAM" if sram else "")
             + f"; weights {_human_bytes(mem['weight_bytes'])}"
             + (f" of {_human_bytes(flash)} flash" if flash else "")]
    est = f"{b.get('estimated_ms', 0):.3g} ms -> {a.get('estimated_ms', 0):.3g} ms"
    lines.append(f"  latency     {est} (estimated on {tgt['name']})")
    measured = manifest.get("measured")
    if measured:
        mb, ma = measured["before"]["median_ms"], measured["after"]["median_ms"]
        lines.append(f"  measured    {mb:.3g} ms -> {ma:.3g} ms onnxruntime CPU, "
                     f"{measured['after']['threads']} thread(s) ({mb / ma:.2f}x)")
    counts = ", ".join(f"{n} on {d}" for d, n in sorted(place["counts"].items()))
    lines.append(f"  placement   {counts}; {len(place['partitions'])} partition(s), "
                 f"{place['transitions']} transition(s)")
    return lines


def _file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _human_bytes(n: int | None) -> str:
    from homec.analysis.memory import human_bytes

    return human_bytes(n, 1)


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
# homec check / fmt / passes
# ---------------------------------------------------------------------------------------


def build_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} check",
                                description="Validate a schedule without a model (exit 2 on errors).")
    p.add_argument("schedule", metavar="SCHEDULE", help="the schedule file (.hc)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    return p


def run_check(args: argparse.Namespace) -> int:
    from homec.driver import load_schedule
    from homec.schedule.ast import PassCall, walk

    schedule = load_schedule(args.schedule)[0]
    if not args.quiet:
        calls = [s for s in walk(schedule.body) if isinstance(s, PassCall)]
        names = sorted({c.name for c in calls})
        print(f"{args.schedule}: ok ({len(calls)} pass calls: {', '.join(names) or 'none'})")
    return int(ExitCode.OK)


def build_fmt_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} fmt",
                                description="Print a schedule in normalized form.")
    p.add_argument("schedule", metavar="SCHEDULE", help="the schedule file (.hc)")
    return p


def run_fmt(args: argparse.Namespace) -> int:
    from homec.schedule.fmt import format_program
    from homec.schedule.parse import parse_file

    if not os.path.isfile(args.schedule):
        raise UsageError("schedule file not found", path=args.schedule)
    sys.stdout.write(format_program(parse_file(args.schedule)))
    return int(ExitCode.OK)


def build_passes_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} passes",
                                description="List the registered passes, their options and docs.")
    p.add_argument("name", nargs="?", help="show one pass in full")
    p.add_argument("--json", action="store_true", help="print as JSON")
    return p


def run_passes(args: argparse.Namespace) -> int:
    from homec.registry import REGISTRY, unknown_pass_message

    infos = REGISTRY.all()
    if args.name:
        info = REGISTRY.get(args.name)
        if info is None:
            raise UsageError(unknown_pass_message(args.name))
        infos = [info]
    if args.json:
        print(json.dumps([{
            "name": i.name, "summary": i.summary, "doc": i.doc, "module": i.module,
            "tolerance": dataclasses.asdict(i.tolerance),
            "options": [{"name": o.name, "type": o.describe(), "default": _json_safe(o.default)}
                        for o in i.options.values()],
        } for i in infos], indent=2, default=str))
        return int(ExitCode.OK)
    for i in infos:
        print(f"{i.name}  —  {i.summary}")
        for o in i.options.values():
            print(f"    {o.name}: {o.describe()} = {_show_default(o.default)}")
        if args.name:
            print()
            print("\n".join("    " + line for line in i.doc.splitlines()))
    for err in REGISTRY.plugin_errors:
        _print_err(f"{PROG}: warning: {err}")
    return int(ExitCode.OK)


def _json_safe(v):
    return list(v) if isinstance(v, tuple) else v


def _show_default(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return "[" + ", ".join(_show_default(x) for x in v) + "]"
    return repr(v)


def build_targets_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} targets",
                                description="List the built-in targets (or describe one target "
                                            "or .toml descriptor file).")
    p.add_argument("target", nargs="?", metavar="TARGET", help="a target name or .toml file")
    p.add_argument("--json", action="store_true", help="print as JSON")
    return p


def run_targets(args: argparse.Namespace) -> int:
    from homec.targets.descriptor import BUILTIN_TARGETS, load_target

    targets = [load_target(args.target)] if args.target else [load_target(n) for n in BUILTIN_TARGETS]
    if args.json:
        print(json.dumps([t.as_dict() for t in targets], indent=2, sort_keys=True))
        return int(ExitCode.OK)
    width = max(len(t.name) for t in targets)
    for t in targets:
        print(f"{t.name:<{width}}  {t.description}")
        print(f"{'':<{width}}  {t.summary()}")
        if args.target:
            print(f"{'':<{width}}  file: {t.path}")
            if not t.all_ops:
                print(f"{'':<{width}}  ops: {', '.join(sorted(t.ops))}")
    return int(ExitCode.OK)


# ---------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "inspect": Command("inspect", "summarize a model (inputs, outputs, operators, parameters)",
                       build_inspect_parser, run_inspect),
    "check": Command("check", "validate a schedule without a model", build_check_parser,
                     run_check),
    "fmt": Command("fmt", "print a schedule in normalized form", build_fmt_parser, run_fmt),
    "passes": Command("passes", "list the registered passes with options and docs",
                      build_passes_parser, run_passes),
    "targets": Command("targets", "list the built-in targets (or describe one)",
                       build_targets_parser, run_targets),
}


if __name__ == "__main__":
    sys.exit(main())
