"""The compile report written to a file: JSON (the machine-readable schema, docs/report.md)
or one self-contained HTML page with plots.

`write_report(report, path)` picks the format by the file's suffix (.json, .html/.htm) and
writes atomically (a temporary file in the same folder renamed into place; OSError ->
OutputError, exit 7); `write_json(manifest, path, what="manifest")` writes any name.

JSON: indent 2, sorted keys, strict (no NaN/Infinity tokens, which JSON does not have):
non-finite floats become the strings "inf", "-inf", "nan"; numpy scalars their Python value.

HTML (`render_html`): no network at all (inline CSS, plots as inline SVG drawn here, no
script), deterministic (the same dict gives the same string: no timestamps, no random ids),
every text escaped. Sections: header, summary before -> after, per-layer MACs, per-layer
pruning ratio / low-rank rank / bit-width, per-layer quantization error, peak memory over the
schedule, placement, memory plan, per-layer estimated latency, passes, warnings. A section
whose data the report lacks says "not available: <why>" instead.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from homec.analysis.memory import human_bytes
from homec.errors import OutputError, UsageError
from homec.files import staging_dir

MAX_BARS = 40  # rows in a per-layer bar chart
MAX_BUFFERS = 400  # rectangles in the memory-plan plot
MAX_TABLE_ROWS = 200  # rows in the fallback-node table
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
BEFORE_COLOUR, AFTER_COLOUR = "#bab0ac", "#4e79a7"
BITS_COLOURS = {4: "#e15759", 8: "#4e79a7", 16: "#edc948", 32: "#bab0ac", 64: "#9c755f"}
DTYPE_BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16,
              "float16": 16, "bfloat16": 16, "float": 32, "float32": 32, "int32": 32,
              "double": 64, "float64": 64}
# Operators that compute on 8-bit integers whatever the report says about their layer.
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                         "DynamicQuantizeMatMul", "QAttention"})
WEIGHT_BITS = {"int4": 4, "int8": 8, "uint8": 8}  # the quantize pass's `weights` option


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def write_report(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write `report` as JSON (.json) or HTML (.html, .htm), atomically."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".json":
        text = to_json(report)
    elif suffix in (".html", ".htm"):
        text = render_html(report)
    else:
        raise UsageError(f"--report: the file name must end in .json or .html, not {path!r}")
    write_text(text, path, what="report")


def write_json(data: Mapping[str, Any], path: str | os.PathLike, *, what: str) -> None:
    """Write `data` as `to_json` text to `path` whatever its suffix (the manifest), atomically."""
    write_text(to_json(data), path, what=what)


def write_text(text: str, path: str | os.PathLike, *, what: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder renamed into
    place: a failure leaves the old file as it was. OSError -> OutputError naming `what`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"{what} folder {directory!r} does not exist", path=path)
    if os.path.isdir(path):
        raise OutputError(f"{path!r} is a directory", path=path)
    try:
        with staging_dir(directory, what) as tmp_dir:
            tmp = os.path.join(tmp_dir, os.path.basename(path))
            # surrogateescape: a depfile names files whose names are not valid UTF-8 byte for byte
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as f:
                f.write(text)
            os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write the {what} ({e.strerror or e})", path=path) from None


def to_json(report: Mapping[str, Any]) -> str:
    """The report as strict JSON text (indent 2, sorted keys, trailing newline)."""
    return json.dumps(_jsonable(report), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _jsonable(o: Any) -> Any:
    if isinstance(o, Mapping):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else str(o)
    if hasattr(o, "tolist"):  # numpy scalars and arrays
        return _jsonable(o.tolist())
    return str(o)


# ---------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _get(d: Any, *keys: str) -> Any:
    """d[k1][k2]..., None when a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _si(v: Any) -> str:
    """1234567 -> 1.23M."""
    if not _is_num(v):
        return "–" if v is None else str(v)
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return str(v) if isinstance(v, int) else f"{v:.3g}"


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else _si(v)


def _bytes(v: Any) -> str:
    if not _is_num(v):
        return "–" if v is None else str(v)
    return human_bytes(v, 1)


def _ms(v: Any) -> str:
    return f"{v:.3g} ms" if _is_num(v) else ("–" if v is None else str(v))


def _pct(v: float) -> str:
    return f"{v * 100:.0f}%" if abs(v) >= 0.1 or v == 0 else f"{v * 100:.1f}%"


def _g(v: Any) -> str:
    return f"{v:.4g}" if _is_num(v) else ("–" if v is None else str(v))


def _short(s: str, n: int = 38) -> str:
    return s if len(s) <= n else s[: n // 2 - 1] + "…" + s[-(n - n // 2):]


def _f(x: float) -> str:
    """An SVG coordinate: one decimal, stable."""
    return f"{x:.1f}"


def _nice_ticks(vmax: float, n: int = 5) -> list[float]:
    """0, step, 2 step, ... up to the first tick >= vmax; step is 1, 2 or 5 times a power of 10."""
    if not vmax > 0:
        return [0.0, 1.0]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    count = math.ceil(vmax / step - 1e-9)
    return [i * step for i in range(count + 1)]


def _byte_ticks(vmax: float, n: int = 5) -> list[float]:
    """Nice ticks in the binary unit (B, KiB, MiB, GiB) that vmax reaches: 0, 2, 4, 6 KiB."""
    unit = 1.0
    while vmax >= 1024 * unit and unit < 1024 ** 3:
        unit *= 1024
    return [t * unit for t in _nice_ticks(vmax / unit, n)]


def _na(why: str) -> str:
    return f'<p class="na">not available: {_e(why)}</p>'


# ---------------------------------------------------------------------------------------
# SVG plots
# ---------------------------------------------------------------------------------------

WIDTH = 960


def _svg(kind: str, title: str, height: float, body: list[str]) -> str:
    return (f'<svg class="plot" data-plot="{_e(kind)}" role="img" aria-label="{_e(title)}" '
            f'width="{WIDTH}" height="{_f(height)}" viewBox="0 0 {WIDTH} {_f(height)}">'
            f'<title>{_e(title)}</title>'
            f'<text class="title" x="8" y="18">{_e(title)}</text>' + "".join(body) + "</svg>")


def _line(x1: float, y1: float, x2: float, y2: float, attrs: str = 'class="grid"', tip: str = "") -> str:
    end = f"><title>{_e(tip)}</title></line>" if tip else "/>"
    return f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" {attrs}{end}'


def _text(x: float, y: float, text: str, anchor: str = "start", attrs: str = 'class="tick"', tip: str = "") -> str:
    inner = (f"<title>{_e(tip)}</title>" if tip else "") + _e(text)
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" {attrs}>{inner}</text>'


def _rect(x: float, y: float, w: float, h: float, fill: str, tip: str, attrs: str = "") -> str:
    return (f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" fill="{fill}"{attrs}>'
            f'<title>{_e(tip)}</title></rect>')


def _legend(entries: Sequence[tuple[str, str]], y: float) -> list[str]:
    out, x = [], WIDTH - 8.0
    for name, colour in reversed(entries):
        x -= 7 * len(name) + 24
        out.append(f'<rect x="{_f(x)}" y="{_f(y - 9)}" width="10" height="10" fill="{colour}"/>'
                   + _text(x + 14, y, name, attrs=""))
    return out


Series = tuple[str, Sequence[float | None], str]  # name, one value per row, colour


def bar_chart(kind: str, title: str, labels: Sequence[str], series: Sequence[Series], *, axis_label: str,
              fmt: Callable[[Any], str], notes: Sequence[str] | None = None,
              bar_colours: Sequence[str] | None = None, legend: Sequence[tuple[str, str]] | None = None,
              hover: Sequence[str] | None = None) -> str:
    """Horizontal grouped bars: one row per label, one bar per series.

    `bar_colours` colours a single series bar by bar (then `legend` explains the colours);
    `notes` are printed after each row's bars; `hover` is each row's tooltip.
    """
    left, right, top = 250.0, 110.0, 40.0
    bar_h = 12.0 if len(series) == 1 else 8.0
    row_h = bar_h * len(series) + 6
    plot_w = WIDTH - left - right
    ticks = _nice_ticks(max((v for _, vals, _ in series for v in vals if _is_num(v)), default=0.0))
    vmax = ticks[-1]
    axis_y = top + row_h * len(labels)
    if legend is None:
        legend = [(name, colour) for name, _, colour in series] if len(series) > 1 else []
    body = _legend(legend, 18)
    for t in ticks:
        x = left + plot_w * t / vmax
        body += [_line(x, top - 4, x, axis_y), _text(x, axis_y + 14, fmt(t), "middle")]
    body += [_line(left, axis_y, left + plot_w, axis_y, 'class="axis"'),
             _text(left + plot_w / 2, axis_y + 32, axis_label, "middle", attrs="")]
    for i, label in enumerate(labels):
        y0 = top + i * row_h
        body.append(_text(left - 6, y0 + row_h / 2 + 4, _short(label), "end", attrs="",
                          tip=hover[i] if hover is not None else label))
        end = left
        for j, (name, vals, colour) in enumerate(series):
            v = vals[i]
            w = plot_w * v / vmax if _is_num(v) and v > 0 else 0.0
            fill = bar_colours[i] if bar_colours is not None else colour
            body.append(_rect(left, y0 + 3 + j * bar_h, w, bar_h - 1, fill, f"{label}: {name} {fmt(v)}"))
            end = max(end, left + w)
        if notes is not None and notes[i]:
            body.append(_text(end + 4, y0 + row_h / 2 + 4, notes[i], attrs='class="note"'))
    return _svg(kind, title, axis_y + 44, body)


def step_chart(kind: str, title: str, labels: Sequence[str], values: Sequence[float | None], *,
               axis_label: str, fmt: Callable[[Any], str], hline: tuple[float, str] | None = None,
               hover: Sequence[str] | None = None, ticks_of: Callable[[float], list[float]] = _nice_ticks) -> str:
    """A step line over categorical steps (one value per step, None breaks the line) and an
    optional horizontal reference line (value, label)."""
    left, right, top, bottom = 80.0, 20.0, 40.0, 130.0
    plot_w, plot_h = WIDTH - left - right, 240.0
    nums = [v for v in values if _is_num(v)]
    ticks = ticks_of(max(nums + ([hline[0]] if hline else []), default=0.0))
    vmax = ticks[-1]
    band = plot_w / max(len(labels), 1)

    def y_of(v: float) -> float:
        return top + plot_h - plot_h * v / vmax

    body = _legend([(axis_label, AFTER_COLOUR)] + ([(hline[1], "#e15759")] if hline else []), 18)
    for t in ticks:
        body += [_line(left, y_of(t), left + plot_w, y_of(t)), _text(left - 6, y_of(t) + 4, fmt(t), "end")]
    body.append(_line(left, top + plot_h, left + plot_w, top + plot_h, 'class="axis"'))
    every = max(1, math.ceil(len(labels) / 40))
    for i, label in enumerate(labels):
        if i % every == 0 or i == len(labels) - 1:
            x, y = left + band * (i + 0.5), top + plot_h + 12
            body.append(f'<text class="tick" transform="translate({_f(x)},{_f(y)}) rotate(-40)" '
                        f'text-anchor="end">{_e(_short(label, 28))}</text>')
    path: list[str] = []
    joined = False
    for i, v in enumerate(values):
        if not _is_num(v):
            joined = False
            continue
        x0, y = left + band * i, y_of(v)
        path.append(f"{'L' if joined else 'M'}{_f(x0)},{_f(y)}H{_f(x0 + band)}")
        joined = True
        tip = hover[i] if hover is not None else f"{labels[i]}: {fmt(v)}"
        body.append(f'<circle cx="{_f(x0 + band / 2)}" cy="{_f(y)}" r="3" fill="{AFTER_COLOUR}">'
                    f'<title>{_e(tip)}</title></circle>')
    if path:
        body.insert(0, f'<path d="{"".join(path)}" fill="none" stroke="{AFTER_COLOUR}" stroke-width="2"/>')
    if hline:
        y = y_of(hline[0])
        body += [_line(left, y, left + plot_w, y, 'stroke="#e15759" stroke-dasharray="6 4" stroke-width="1.5"'),
                 _text(left + plot_w - 4, y - 4, f"{hline[1]} {fmt(hline[0])}", "end", attrs='fill="#e15759"')]
    return _svg(kind, title, top + plot_h + bottom, body)


Rect = tuple[float, float, float, float, str, str]  # x0, x1, y0, y1 (data units), colour, tooltip


def rect_plot(kind: str, title: str, rects: Sequence[Rect], *, x_max: float, y_max: float, x_label: str,
              y_label: str, fmt_y: Callable[[Any], str], hlines: Sequence[tuple[float, str, str]] = (),
              ticks_of: Callable[[float], list[float]] = _nice_ticks) -> str:
    """Rectangles in data units, y growing upwards, with horizontal reference lines
    (value, label, colour)."""
    left, right, top, bottom = 80.0, 20.0, 40.0, 50.0
    plot_w, plot_h = WIDTH - left - right, 320.0
    y_ticks = ticks_of(max([y_max] + [h[0] for h in hlines]))
    x_ticks = _nice_ticks(max(x_max, 1.0), 10)
    ymax, xmax = y_ticks[-1], x_ticks[-1]

    def px(x: float) -> float:
        return left + plot_w * x / xmax

    def py(y: float) -> float:
        return top + plot_h - plot_h * y / ymax

    body = _legend([(label, colour) for _, label, colour in hlines], 18)
    for t in y_ticks:
        body += [_line(left, py(t), left + plot_w, py(t)), _text(left - 6, py(t) + 4, fmt_y(t), "end")]
    body += [_text(px(t), top + plot_h + 14, _si(t), "middle") for t in x_ticks]
    body += [_line(left, top + plot_h, left + plot_w, top + plot_h, 'class="axis"'),
             _text(left + plot_w / 2, top + plot_h + 34, x_label, "middle", attrs=""),
             f'<text transform="translate(14,{_f(top + plot_h / 2)}) rotate(-90)" '
             f'text-anchor="middle">{_e(y_label)}</text>']
    for x0, x1, y0, y1, colour, tip in rects:
        body.append(_rect(px(x0), py(y1), max(px(x1) - px(x0), 0.5), max(py(y0) - py(y1), 0.5), colour, tip,
                          ' stroke="#fff" stroke-width="0.3"'))
    for value, label, colour in hlines:
        body.append(_line(left, py(value), left + plot_w, py(value),
                          f'stroke="{colour}" stroke-dasharray="6 4" stroke-width="1.5"', f"{label} {fmt_y(value)}"))
    return _svg(kind, title, top + plot_h + bottom, body)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None,
           cls: str = "") -> str:
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if numeric[i] else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table{f" class={cls}" if cls else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _header(report: Mapping[str, Any]) -> str:
    target = report.get("target") or _get(report, "manifest", "target", "name")
    items = [("input", report.get("input")), ("output", report.get("output")), ("target", target),
             ("manifest model", _get(report, "manifest", "model")),
             ("schedule", report.get("schedule")), ("homec version", report.get("homec_version")),
             ("report schema", report.get("schema_version")),
             ("compile time", f"{report['seconds']:.2f} s" if _is_num(report.get("seconds")) else None)]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items if v not in (None, ""))
    error = report.get("error")
    banner = ""
    if isinstance(error, Mapping):  # the compile failed after its passes ran; this is its report
        banner = (f'<p class="error">build failed (exit {_e(error.get("exit_code", "?"))}): '
                  f'{_e(error.get("message", ""))}</p>')
    return f"<header><h1>homec compile report</h1><dl>{rows}</dl>{banner}</header>"


def _summary(report: Mapping[str, Any]) -> str:
    before, after = report.get("before") or {}, report.get("after") or {}
    rows: list[tuple[str, Any, Any, Callable[[Any], str]]] = [
        ("nodes", before.get("nodes"), after.get("nodes"), _count),
        ("parameters", before.get("parameters"), after.get("parameters"), _count),
        ("parameter bytes", before.get("parameter_bytes"), after.get("parameter_bytes"), _bytes),
        ("MACs", before.get("macs"), after.get("macs"), _si),
        ("file size", _get(report, "files", "input_bytes"), _get(report, "files", "output_bytes"), _bytes),
    ]
    steps = report.get("memory_over_schedule") or []
    if steps:
        rows.append(("peak activation memory (sum of live tensors)", steps[0].get("peak_bytes"),
                     steps[-1].get("peak_bytes"), _bytes))
    mem = _get(report, "manifest", "memory") or {}
    arena_after = after.get("arena_bytes", mem.get("arena_bytes"))
    if before.get("arena_bytes") is not None or arena_after is not None:
        rows.append(("activation arena (planned)", before.get("arena_bytes"), arena_after, _bytes))
    if mem.get("weight_bytes") is not None:
        rows.append(("weight bytes on the device", None, mem["weight_bytes"], _bytes))
    budget = _get(report, "manifest", "target", "memory") or {}
    for key, label, used, what in (("sram_bytes", "SRAM budget", arena_after, "arena"),
                                   ("flash_bytes", "flash budget", mem.get("weight_bytes"), "weights")):
        if _is_num(budget.get(key)) and budget[key] > 0:
            use = ""
            if _is_num(used):
                share = used / budget[key] * 100
                use = f" ({what} {share:.0f}%" if share >= 10 else f" ({what} {share:.2g}%"
                use += ": OVER)" if used > budget[key] else ")"
            rows.append((label, None, f"{_bytes(budget[key])}{use}", str))
    ms_after = after.get("estimated_ms", _get(report, "manifest", "estimate", "total_ms"))
    if before.get("estimated_ms") is not None or ms_after is not None:
        rows.append(("estimated latency", before.get("estimated_ms"), ms_after, _ms))
    measured = _get(report, "manifest", "measured")
    if isinstance(measured, Mapping) and measured:
        rows.append(("measured latency", _measured(measured.get("before")), _measured(measured.get("after")), str))
    ver = report.get("verification")
    if isinstance(ver, Mapping):
        outs = [o for o in ver.get("outputs") or [] if isinstance(o, Mapping)]
        errors = [o.get("max_abs") for o in outs if o.get("max_abs") is not None]
        odd = [v for v in errors if not _is_num(v)]  # inf / nan (strings once through JSON)
        worst = str(odd[0]) if odd else max(errors, default=None)
        cos = min((o["cosine"] for o in outs if _is_num(o.get("cosine"))), default=None)
        verdict = "passed" if ver.get("ok") else "FAILED"
        on = f"{ver.get('samples', '?')} {ver.get('inputs', '')} input(s)"
        rows.append(("verification", None, f"{verdict} on {on}", str))
        rows.append(("max abs error", None, worst, _g))
        rows.append(("cosine (worst output)", None, cos, lambda v: f"{v:.6f}" if _is_num(v) else "–"))
    placement = _get(report, "manifest", "placement") or {}
    if placement:
        counts = placement.get("counts") or {}
        rows.append(("placement", None, ", ".join(f"{d} {n}" for d, n in sorted(counts.items())), str))
        rows.append(("partitions / transitions", None,
                     f"{len(placement.get('partitions') or [])} / {placement.get('transitions', '–')}", str))

    def change(b: Any, a: Any) -> str:
        if _is_num(b) and _is_num(a) and b:
            return f"{(a - b) / b * 100:+.1f}%"
        return ""

    table = _table(("", "before", "after", "change"),
                   [(name, fmt(b) if b is not None else "", fmt(a) if a is not None else "–", change(b, a))
                    for name, b, a, fmt in rows if b is not None or a is not None],
                   numeric=(False, True, True, True))
    return _section("summary", "Summary", table)


def _measured(m: Any) -> str | None:
    """A measurement (homec.targets.estimate.measure_latency's dict, or a number of ms) as text."""
    if m is None:
        return None
    if isinstance(m, Mapping) and _is_num(m.get("median_ms")):
        return f"{_ms(m['median_ms'])} median, {_ms(m.get('p90_ms'))} p90 ({m.get('runs', '?')} runs)"
    if isinstance(m, Mapping):
        return ", ".join(f"{k} {_g(v)}" for k, v in sorted(m.items()))
    return _ms(m)


def _layer_macs(report: Mapping[str, Any]) -> str:
    before, after = _get(report, "layers", "before"), _get(report, "layers", "after")
    if not isinstance(before, list) or not isinstance(after, list):
        return _na("the report has no per-layer figures (report.layers)")
    table: dict[str, list[float]] = {}
    for side, rows in ((0, before), (1, after)):
        for r in rows:
            entry = table.setdefault(str(r.get("node")), [0, 0])
            entry[side] += r.get("macs") or 0
    if not table:
        return _na("the model has no MAC-bearing layers")
    ranked = sorted(table.items(), key=lambda kv: -max(kv[1]))[:MAX_BARS]
    labels = [k for k, _ in ranked]
    cut = f" (top {len(ranked)} of {len(table)})" if len(table) > len(ranked) else ""
    return bar_chart("macs", f"MACs per layer, before and after{cut}", labels,
                     [("before", [v[0] for _, v in ranked], BEFORE_COLOUR),
                      ("after", [v[1] for _, v in ranked], AFTER_COLOUR)],
                     axis_label="MACs", fmt=_si,
                     notes=["removed" if v[1] == 0 else ("new" if v[0] == 0 else "") for _, v in ranked])


def _passes_named(report: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    return [p for p in report.get("passes") or [] if isinstance(p, Mapping) and p.get("name") == name]


def _label(p: Mapping[str, Any], text: str, many: bool) -> str:
    return f"#{p.get('index')} {text}" if many else text


def _pruning(report: Mapping[str, Any]) -> str:
    passes = [p for p in _passes_named(report, "prune_channels") if _get(p, "details", "groups")]
    if not passes:
        return _na("no prune_channels pass reported channel groups")
    many = len(passes) > 1
    rows = [(p, g) for p in passes for g in p["details"]["groups"]]
    cut = f" (first {MAX_BARS} of {len(rows)} groups)" if len(rows) > MAX_BARS else ""
    rows = rows[:MAX_BARS]
    return bar_chart("prune", f"Pruning ratio per channel group{cut}",
                     [_label(p, str(g.get("group")), many) for p, g in rows],
                     [("ratio", [g.get("ratio") for _, g in rows], "#e15759")],
                     axis_label="fraction of channels removed", fmt=_pct,
                     notes=[f"{g.get('removed')}/{g.get('channels')}" for _, g in rows],
                     hover=[f"{g.get('group')}: producers {', '.join(map(str, g.get('producers') or []))}"
                            for _, g in rows])


def _low_rank(report: Mapping[str, Any]) -> str:
    passes = [p for p in _passes_named(report, "low_rank") if _get(p, "details", "layers")]
    if not passes:
        return _na("no low_rank pass factorized a layer")
    many = len(passes) > 1
    rows = [(p, la) for p in passes for la in p["details"]["layers"]]
    cut = f" (first {MAX_BARS} of {len(rows)} layers)" if len(rows) > MAX_BARS else ""
    rows = rows[:MAX_BARS]

    def kept(la: Mapping[str, Any]) -> float | None:
        ranks, full = la.get("ranks") or [], la.get("full_ranks") or []
        fr = [r / f for r, f in zip(ranks, full) if f]
        return sum(fr) / len(fr) if fr else None

    return bar_chart("rank", f"Low-rank factorization: kept rank per layer{cut}",
                     [_label(p, str(la.get("node")), many) for p, la in rows],
                     [("rank / full rank", [kept(la) for _, la in rows], "#59a14f")],
                     axis_label="rank / full rank", fmt=_pct,
                     notes=[f"{la.get('method')} {'×'.join(map(str, la.get('ranks') or []))}"
                            f"/{'×'.join(map(str, la.get('full_ranks') or []))}" for _, la in rows])


def layer_bits(report: Mapping[str, Any]) -> list[tuple[str, str, int]] | None:
    """(node, op, bits) per layer of the output model, None without per-layer data.

    Bits, first that applies: the layer's `weight_dtype` if the report gives it; 8 for an
    integer operator (QLinearConv, ConvInteger, ...); the quantize pass's weight width
    (int4: 4, else 8) for a layer whose output it quantized (its details["layer_error"]);
    the placement's or estimate's compute dtype; otherwise 32 (float).
    """
    layers = _get(report, "layers", "after")
    if not isinstance(layers, list):
        layers = _get(report, "manifest", "estimate", "layers")
    if not isinstance(layers, list):
        return None
    quantized: dict[str, int] = {}
    for p in _passes_named(report, "quantize"):
        bits = WEIGHT_BITS.get(str(_get(p, "options", "weights")), 8)
        for row in _get(p, "details", "layer_error") or []:
            if row.get("node"):
                quantized[row["node"]] = bits
    device_dtype: dict[str, str] = {}
    for source in (_get(report, "manifest", "estimate", "layers"), _get(report, "manifest", "placement", "nodes")):
        for row in source or []:
            if row.get("dtype"):
                device_dtype.setdefault(str(row.get("node")), str(row["dtype"]))
    out = []
    for la in layers:
        node, op = str(la.get("node")), str(la.get("op"))
        if la.get("weight_dtype") in DTYPE_BITS:
            bits = DTYPE_BITS[la["weight_dtype"]]
        elif op in INTEGER_OPS:
            bits = 8
        elif node in quantized:
            bits = quantized[node]
        else:
            bits = DTYPE_BITS.get(device_dtype.get(node, "float32"), 32)
        out.append((node, op, bits))
    return out


def _bit_width(report: Mapping[str, Any]) -> str:
    rows = layer_bits(report)
    if rows is None:
        return _na("the report has no per-layer list of the output model")
    if not rows:
        return _na("the output model has no MAC-bearing layers")
    if not _passes_named(report, "quantize") and all(b == 32 for _, _, b in rows):
        return _na("no quantize pass ran and every layer computes in float")
    cut = f" (first {MAX_BARS} of {len(rows)} layers)" if len(rows) > MAX_BARS else ""
    shown = rows[:MAX_BARS]
    present = sorted({b for _, _, b in rows})
    return bar_chart("bits", f"Bit-width per layer{cut}", [n for n, _, _ in shown],
                     [("bits", [b for _, _, b in shown], AFTER_COLOUR)],
                     axis_label="weight bits", fmt=lambda v: f"{v:g}",
                     bar_colours=[BITS_COLOURS.get(b, "#76b7b2") for _, _, b in shown],
                     legend=[(f"{b} bit ({sum(1 for *_, x in rows if x == b)})", BITS_COLOURS.get(b, "#76b7b2"))
                             for b in present],
                     notes=[op for _, op, _ in shown])


def _quant_error(report: Mapping[str, Any]) -> str:
    passes = [p for p in _passes_named(report, "quantize") if _get(p, "details", "layer_error")]
    if not passes:
        return _na("no quantize pass reported per-layer errors (details.layer_error; "
                   "off with layer_report=false and for int4 weight-only quantization)")
    many = len(passes) > 1
    rows = [(p, r) for p in passes for r in p["details"]["layer_error"]]
    if len(rows) > MAX_BARS:  # the worst ones, kept in graph order
        worst = sorted(range(len(rows)), key=lambda i: -(rows[i][1].get("rel_l2") or 0))[:MAX_BARS]
        rows = [rows[i] for i in sorted(worst)]
        title = f"Quantization error per tensor (the {MAX_BARS} largest, in graph order)"
    else:
        title = "Quantization error per tensor (float vs quantized activation)"
    return bar_chart("quant_error", title,
                     [_label(p, str(r.get("node") or r.get("tensor")), many) for p, r in rows],
                     [("relative L2", [r.get("rel_l2") for _, r in rows], "#f28e2b")],
                     axis_label="relative L2 error ‖q − f‖ / ‖f‖", fmt=_g,
                     notes=[f"cos {r['cosine']:.5f}" if _is_num(r.get("cosine")) else "" for _, r in rows],
                     hover=[f"{r.get('tensor')} ({r.get('op_type') or 'input'}): rel_l2 {_g(r.get('rel_l2'))}, "
                            f"max_abs {_g(r.get('max_abs'))}, cosine {_g(r.get('cosine'))}" for _, r in rows])


def _memory_schedule(report: Mapping[str, Any]) -> str:
    steps = report.get("memory_over_schedule")
    if not steps:
        return _na("the report has no memory_over_schedule")
    values = [s.get("peak_bytes") for s in steps]
    if not any(_is_num(v) for v in values):
        return _na("peak memory is unknown at every step (shapes not static)")
    sram = _get(report, "manifest", "target", "memory", "sram_bytes")
    title = "Peak activation memory after each pass"
    highest = max(v for v in values if _is_num(v))
    if _is_num(sram) and sram > 4 * highest:  # drawn, the line would flatten the plot
        title += f" (SRAM budget {_bytes(sram)}: off the scale)"
        sram = None
    return step_chart("memory_schedule", title,
                      [f"{s.get('step')}: {s.get('pass')}" for s in steps], values,
                      axis_label="peak bytes", fmt=_bytes, ticks_of=_byte_ticks,
                      hline=(sram, "SRAM budget") if _is_num(sram) else None,
                      hover=[f"{s.get('step')}: {s.get('pass')}: {_bytes(s.get('peak_bytes'))}, "
                             f"{s.get('nodes')} nodes" for s in steps])


def _device_colours(placement: Mapping[str, Any]) -> dict[str, str]:
    devices = [placement.get("device"), placement.get("fallback")]
    devices += sorted({str(n.get("device")) for n in placement.get("nodes") or []} - set(devices))
    return {str(d): PALETTE[i % len(PALETTE)] for i, d in enumerate(x for x in devices if x is not None)}


def _placement(report: Mapping[str, Any]) -> str:
    placement = _get(report, "manifest", "placement")
    if not isinstance(placement, Mapping):
        return _na("the report has no placement (compile with a target)")
    nodes = placement.get("nodes") or []
    colours = _device_colours(placement)
    parts = [f"<p>{len(placement.get('partitions') or [])} partition(s), "
             f"{_e(placement.get('transitions', '–'))} transition(s) between devices; "
             + ", ".join(f"{_e(d)}: {_e(n)} node(s)" for d, n in sorted((placement.get("counts") or {}).items()))
             + "</p>"]
    if nodes:
        left, strip_w, top, h = 8.0, WIDTH - 16.0, 34.0, 28.0
        runs: list[list[int]] = []  # [first, last] index of consecutive nodes on one device
        for i, n in enumerate(nodes):
            if runs and nodes[runs[-1][0]].get("device") == n.get("device"):
                runs[-1][1] = i
            else:
                runs.append([i, i])
        body = _legend([(d, c) for d, c in colours.items()], 18)
        for first, last in runs:
            dev = str(nodes[first].get("device"))
            x0, x1 = left + strip_w * first / len(nodes), left + strip_w * (last + 1) / len(nodes)
            tip = f"{dev}: nodes {first}–{last} ({nodes[first].get('node')} … {nodes[last].get('node')})"
            body.append(_rect(x0, top, max(x1 - x0, 0.5), h, colours.get(dev, "#999"), tip))
        body += [_text(left, top + h + 14, "node 0"),
                 _text(left + strip_w, top + h + 14, f"node {len(nodes) - 1}", "end")]
        parts.append(_svg("placement", "Placement: nodes in execution order, coloured by device",
                          top + h + 24, body))
    off = [n for n in nodes if n.get("reason")]
    if off:
        # grouped by op and reason (names in a reason generalized), then every node, folded
        groups: dict[tuple[str, str, str], list[str]] = {}
        for n in off:
            key = (str(n.get("op")), str(n.get("device")), re.sub(r"`[^`]*`", "`…`", str(n.get("reason"))))
            groups.setdefault(key, []).append(str(n.get("node")))
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        parts.append("<h3>Why nodes are off the accelerator</h3>"
                     + _table(("op", "device", "reason", "nodes", "e.g."),
                              [(op, dev, why, len(names), ", ".join(names[:3]) + (" …" if len(names) > 3 else ""))
                               for (op, dev, why), names in ranked],
                              numeric=(False, False, False, True, False)))
        cut = f" (first {MAX_TABLE_ROWS})" if len(off) > MAX_TABLE_ROWS else ""
        parts.append(f"<details><summary>all {len(off)} nodes off the accelerator{_e(cut)}</summary>"
                     + _table(("node", "op", "device", "dtype", "reason"),
                              [(n.get("node"), n.get("op"), n.get("device"), n.get("dtype") or "", n.get("reason"))
                               for n in off[:MAX_TABLE_ROWS]]) + "</details>")
    listed = {n.get("node") for n in off}
    unsupported = [u for u in placement.get("unsupported") or [] if u.get("node") not in listed]
    if unsupported:  # without a fallback device: the nodes that fail the build
        parts.append("<h3>Unsupported on the accelerator</h3>"
                     + _table(("node", "op", "reason"), [(u.get("node"), u.get("op"), u.get("reason"))
                                                         for u in unsupported[:MAX_TABLE_ROWS]]))
    return "".join(parts)


def _memory_plan(report: Mapping[str, Any]) -> str:
    mem = _get(report, "manifest", "memory")
    if not isinstance(mem, Mapping):
        return _na("the report has no memory plan (compile with a target)")
    facts = [("arena", _bytes(mem.get("arena_bytes"))), ("lower bound", _bytes(mem.get("lower_bound_bytes"))),
             ("without reuse", _bytes(mem.get("no_reuse_bytes"))), ("weights", _bytes(mem.get("weight_bytes"))),
             ("alignment", mem.get("alignment")), ("in place", mem.get("in_place")),
             ("peak at", f"step {mem.get('peak_step')} ({mem.get('peak_node')})")]
    parts = ["<p>" + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in facts if v is not None) + "</p>"]
    largest = mem.get("largest_live") or []
    if largest:
        parts.append("<p>largest live tensors at the peak: "
                     + ", ".join(f"{_e(t.get('name'))} ({_e(_bytes(t.get('bytes')))})" for t in largest) + "</p>")
    if mem.get("unknown"):
        parts.append(f"<p>{len(mem['unknown'])} tensor(s) of unknown size are not in the plan.</p>")
    buffers = [b for b in mem.get("buffers") or []
               if not b.get("alias_of") and _is_num(b.get("bytes")) and b["bytes"] > 0
               and all(_is_num(b.get(k)) for k in ("offset", "start", "end"))]
    if not buffers:
        parts.append(_na("the plan lists no buffers"))
        return "".join(parts)
    shown = sorted(buffers, key=lambda b: (-b["bytes"], str(b.get("name"))))[:MAX_BUFFERS]
    rects = [(b["start"], b["end"] + 1, b["offset"], b["offset"] + b["bytes"], PALETTE[i % len(PALETTE)],
              f"{b.get('name')}: {_bytes(b['bytes'])} at offset {b['offset']}, steps {b['start']}–{b['end']}")
             for i, b in enumerate(shown)]
    arena = mem.get("arena_bytes") if _is_num(mem.get("arena_bytes")) else max(r[3] for r in rects)
    hlines = [(arena, "arena", "#333333")]
    sram = _get(report, "manifest", "target", "memory", "sram_bytes")
    cut = f" (the {len(shown)} largest of {len(buffers)})" if len(buffers) > len(shown) else ""
    title = f"Activation arena: buffers over the schedule{cut}"
    if _is_num(sram) and sram <= 4 * arena:  # further up it would flatten the plot
        hlines.append((sram, "SRAM budget", "#e15759"))
    elif _is_num(sram):
        title += f"; SRAM budget {_bytes(sram)} (off the scale)"
    parts.append(rect_plot("memory_plan", title, rects,
                           x_max=max(r[1] for r in rects), y_max=max(r[3] for r in rects),
                           x_label="step", y_label="offset", fmt_y=_bytes, hlines=hlines, ticks_of=_byte_ticks))
    return "".join(parts)


def _latency(report: Mapping[str, Any]) -> str:
    est = _get(report, "manifest", "estimate")
    if not isinstance(est, Mapping):
        return _na("the report has no estimate (compile with a target)")
    by_device = ", ".join(f"{_e(d)} {_e(_ms(v))}" for d, v in sorted((est.get("by_device") or {}).items()))
    parts = [f"<p>total {_e(_ms(est.get('total_ms')))} ({by_device}); {_e(est.get('transitions', 0))} "
             f"transition(s) costing {_e(_ms(est.get('transitions_ms')))}</p>"]
    layers = [la for la in est.get("layers") or [] if _is_num(la.get("ms")) and la["ms"] > 0]
    if not layers:
        parts.append(_na("the estimate has no per-layer times"))
        return "".join(parts)
    ranked = sorted(layers, key=lambda la: -la["ms"])[:MAX_BARS]
    colours = _device_colours(_get(report, "manifest", "placement") or
                              {"nodes": [{"device": la.get("device")} for la in layers]})
    cut = f" (top {len(ranked)} of {len(layers)})" if len(layers) > len(ranked) else ""
    parts.append(bar_chart("latency", f"Estimated latency per layer{cut}", [str(la.get("node")) for la in ranked],
                           [("ms", [la["ms"] for la in ranked], AFTER_COLOUR)],
                           axis_label="estimated ms", fmt=lambda v: f"{v:.3g}",
                           bar_colours=[colours.get(str(la.get("device")), "#999") for la in ranked],
                           legend=[(d, c) for d, c in colours.items()
                                   if any(str(la.get("device")) == d for la in ranked)],
                           notes=[f"{la.get('dtype') or ''} {la.get('bound') or ''}".strip() for la in ranked],
                           hover=[f"{la.get('node')} ({la.get('op')}, {la.get('device')}): {_si(la.get('macs'))} MACs, "
                                  f"{_bytes(la.get('bytes'))}, {_si(la.get('cycles'))} cycles, {la.get('bound')}-bound"
                                  for la in ranked]))
    return "".join(parts)


def _pass_table(report: Mapping[str, Any]) -> str:
    passes = [p for p in report.get("passes") or [] if isinstance(p, Mapping)]
    if not passes:
        return _na("no pass ran")
    rows = []
    for p in passes:
        stats = ", ".join(f"{k}={v}" for k, v in (p.get("stats") or {}).items() if v) or "(no change)"
        name = f"{p.get('name')} {p['selector']}" if p.get("selector") else p.get("name")
        secs = f"{p['seconds'] * 1000:.1f} ms" if _is_num(p.get("seconds")) else "–"
        rows.append((p.get("index"), name, p.get("phase") or "schedule", secs,
                     f"{p.get('nodes_before')} → {p.get('nodes_after')}", stats))
    total = sum(p["seconds"] for p in passes if _is_num(p.get("seconds")))
    return (_table(("#", "pass", "phase", "time", "nodes", "statistics"), rows,
                   numeric=(True, False, False, True, True, False), cls="passes")
            + f"<p>{len(passes)} pass invocation(s), {total * 1000:.1f} ms in passes.</p>")


def _warnings(report: Mapping[str, Any]) -> str:
    warnings = report.get("warnings") or []
    if not warnings:
        return "<p>none</p>"
    return "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fff;
 max-width:1000px;margin:0 auto;padding:12px 20px 40px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:15px}dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0}
dt{color:#666}dd{margin:0;word-break:break-all}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;
 text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.passes td:last-child{font-size:12px;color:#444;word-break:break-word}
.na{color:#777;font-style:italic}.error{background:#fdecea;border:1px solid #e15759;padding:6px 10px;
 color:#a01c1c;font-weight:600}details{margin:6px 0}summary{cursor:pointer;color:#345}nav a{margin-right:10px}
svg.plot{display:block;margin:10px 0;max-width:100%;height:auto;background:#fcfcfc;border:1px solid #eee}
svg text{font-size:11px;fill:#333}svg text.title{font-size:13px;font-weight:600}svg text.note{fill:#666}
svg .grid{stroke:#e6e6e6}svg .axis{stroke:#888}
"""

SECTIONS = (
    ("macs", "Per-layer MACs", _layer_macs),
    ("compression", "Per-layer compression", lambda r: _pruning(r) + _low_rank(r) + _bit_width(r)),
    ("quant-error", "Per-layer quantization error", _quant_error),
    ("memory-schedule", "Memory over the schedule", _memory_schedule),
    ("placement", "Placement", _placement),
    ("memory-plan", "Memory plan", _memory_plan),
    ("latency", "Estimated latency", _latency),
    ("passes", "Passes", _pass_table),
    ("warnings", "Warnings", _warnings),
)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    name = os.path.basename(str(report.get("input") or report.get("output") or "model"))
    links = [("summary", "Summary")] + [(anchor, title) for anchor, title, _ in SECTIONS]
    nav = "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in links) + "</nav>"
    body = [_header(report), nav, _summary(report)]
    body += [_section(anchor, title, fn(report)) for anchor, title, fn in SECTIONS]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>homec report: {_e(name)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
