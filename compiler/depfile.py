"""Dependency files (`--depfile OUT.d`) that make and ninja read to rebuild a compiled model
when anything it was compiled from changes.

    deps = dependencies(model_path="kws.onnx", schedule_path="int8.hc", target=target)
    write_depfile("out/kws.onnx.d", ["out/kws.onnx"], deps)

The output depends on: the model; the external-data files its tensors point to; the schedule
and every file it includes, transitively; the target descriptor file (a built-in's packaged
TOML too, and the built-in a user file `extends`); the calibration data (the .npz file, or a
folder and every .npz in it; the folder itself too, so adding or removing a sample rebuilds).

Paths. make and ninja match the depfile's target against their own rule textually, and find
prerequisites relative to the folder they run in, which is the folder homec runs in. So paths
are written as the user gave them, normalized (`./a/../b` -> `b`): relative stays relative to
the working directory, absolute stays absolute. Files found through another file are joined
to that file's path as given (external data to the model's folder, includes to the including
schedule's folder). A target given as a loaded `Target` is its absolute `.path`.

Format. Make syntax, which ninja (and CMake's DEPFILE) reads too, like `gcc -MD -MP`:
`out.onnx out.json: \\` then one prerequisite per continuation line, then an empty rule per
prerequisite so that deleting a file that is no longer needed (an include dropped from the
schedule) does not stop make with "No rule to make target". Space, `#` and `:` are escaped
with a backslash and `$` doubled. Characters that make and ninja cannot both read back as
the same file name are refused with a UsageError naming the path: control characters
(newline, tab, ...), a backslash, `|`, `;` and `=` (make syntax ninja keeps literally), `[`
(make expands `[...]` as a wildcard), ``* ? " ' & < > ^ ` `` (ninja 1.11 ends a name there),
a leading `~` (make's home folder), a name ending in `(...)` (make's archive members) and `%`
in an output (it would make a pattern rule). A name with `%` gets no empty rule.
"""

from __future__ import annotations

import os
import tomllib

from homec.errors import UsageError
from homec.onnx_io import external_data_files

__all__ = ["dependencies", "format_depfile", "write_depfile"]


def dependencies(*, model_path: str | os.PathLike, schedule_path: str | os.PathLike | None = None,
                 target=None, calib_path: str | os.PathLike | None = None) -> list[str]:
    """Every file the compiled output depends on, normalized, sorted and deduplicated.

    `target`: a `homec.targets.descriptor.Target` (its `.path`, absolute), the `-t` argument
    as a string (a built-in name, or a file path kept as given), or None.
    """
    model = os.fspath(model_path)
    deps = {model, *external_data_files(model)}
    if schedule_path is not None:
        deps.update(_schedule_files(os.fspath(schedule_path)))
    if target is not None:
        deps.update(_target_files(target))
    if calib_path is not None:
        deps.update(_calibration_files(os.fspath(calib_path)))
    return sorted({os.path.normpath(p) for p in deps})


def _schedule_files(schedule_path: str) -> list[str]:
    from homec.schedule.parse import parse_file

    # Each Program's `file` is the path it was read from: the top one as given, an included
    # one joined to its includer's folder.
    return [program.file for program in parse_file(schedule_path).files()]


def _target_files(target) -> list[str]:
    from homec.targets.descriptor import BUILTIN_TARGETS, builtin_target_path, load_target

    if isinstance(target, (str, os.PathLike)):
        spec = os.fspath(target)
        path = builtin_target_path(spec) if spec in BUILTIN_TARGETS else spec
        load_target(spec)  # the same errors as the compile for a missing or broken file
    else:
        path = target.path
    if path is None:  # a Target built in memory (target_from_dict) reads no file
        return []
    files = [path]
    try:
        with open(path, "rb") as f:
            base = tomllib.load(f).get("extends")
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read the target file ({e})", path=path) from None
    if isinstance(base, str) and base in BUILTIN_TARGETS:
        files.append(builtin_target_path(base))
    return files


def _calibration_files(calib_path: str) -> list[str]:
    if not os.path.isdir(calib_path):
        return [calib_path]
    # The same selection as homec.calib.load_calibration.
    return [calib_path] + [os.path.join(calib_path, f) for f in os.listdir(calib_path)
                           if f.endswith(".npz")]


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

_ESCAPES = {" ": "\\ ", "#": "\\#", ":": "\\:", "$": "$$"}
_REFUSED = {
    "\\": "a backslash", "|": "`|`", ";": "`;`", "=": "`=` (make syntax)",
    "[": "`[` (make reads `[...]` as a wildcard)",
    **{c: f"`{c}` (ninja ends a name there)" for c in "*?\"'&<>^`"},
}


def _escape(path: str, *, output: bool) -> str:
    why = None
    bad = next((c for c in path if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        why = f"a control character ({bad!r})"
    elif (c := next((c for c in path if c in _REFUSED), None)) is not None:
        why = _REFUSED[c]
    elif path.startswith("~"):
        why = "a leading `~` (make reads it as a home folder)"
    elif path.endswith(")") and "(" in path:
        why = "a name ending in `(...)` (make reads it as an archive member)"
    elif output and "%" in path:
        why = "`%` in an output (make would read a pattern rule)"
    if why is not None:
        raise UsageError(f"cannot write {path!r} in a depfile: the name contains {why}; "
                         "rename the file or leave out --depfile")
    return "".join(_ESCAPES.get(c, c) for c in path)


def format_depfile(outputs: list[str], deps: list[str]) -> str:
    """The depfile text: `outputs` depend on `deps` (Make syntax, read by ninja too)."""
    if not outputs:
        raise ValueError("a depfile needs at least one output")
    targets = " ".join(_escape(os.fspath(o), output=True) for o in outputs)
    prerequisites = [_escape(os.fspath(d), output=False) for d in deps]
    lines = [f"{targets}:" + (" \\" if prerequisites else "")]
    lines += [f"  {p} \\" for p in prerequisites[:-1]]
    lines += [f"  {p}" for p in prerequisites[-1:]]
    text = "\n".join(lines) + "\n"
    # One empty rule per prerequisite (gcc -MP): a file that is gone is then simply out of
    # date instead of an error, and the next compile writes a depfile without it.
    # (Not for a name with `%`: its empty rule would be a pattern rule.)
    return text + "".join(f"\n{p}:\n" for p in prerequisites if "%" not in p)


def write_depfile(path: str | os.PathLike, outputs: list[str], deps: list[str]) -> None:
    """Write the depfile atomically: make never reads half of one (a temporary file in the
    same folder, renamed into place; see homec.report.write_text)."""
    from homec.report import write_text

    text = format_depfile(outputs, deps)  # a UsageError here leaves any old file alone
    write_text(text, path, what="depfile")
