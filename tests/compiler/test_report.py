"""homec.report: the JSON report file and the self-contained HTML page (rendered in headless
Chromium)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import zlib

import numpy as np
import pytest

import homec
from homec import report as R
from homec.errors import OutputError, UsageError

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
KWS = os.path.join(EXAMPLES, "kws_cnn.onnx")
SCHEDULE = """schedule {
  cleanup
  prune_channels(ratio=0.5)
  low_rank(ratio=0.5, force=true)
  quantize(calibration="random")
}"""
ALL_PLOTS = ("macs", "prune", "rank", "bits", "quant_error", "memory_schedule", "placement",
             "memory_plan", "latency")


@pytest.fixture(scope="module")
def compiled():
    """(a report without the target sections, a full report), both from real compiles: the
    schedule with prune_channels, low_rank and quantize, alone and for the npu-int8 target
    (layers, memory over the schedule, manifest: placement, memory plan, estimate)."""
    plain = json.loads(R.to_json(homec.compile(KWS, SCHEDULE, verify=True).report))
    for key in ("layers", "memory_over_schedule", "manifest"):
        plain.pop(key, None)
    full = homec.compile(KWS, SCHEDULE, verify=True, target="npu-int8").report
    assert full["manifest"]["placement"]["counts"].get("cpu"), "the example should use the fallback"
    full.update(output="kws_cnn.homec.onnx", homec_version=homec.__version__,
                files={"input_bytes": os.path.getsize(KWS), "output_bytes": 22610})
    return plain, json.loads(R.to_json(full))


def _plots(page: str) -> set[str]:
    return set(re.findall(r'<svg class="plot" data-plot="([a-z_]+)"', page))


def _notes(page: str) -> list[str]:
    return re.findall(r'<p class="na">not available: ([^<]*)</p>', page)


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------


def test_every_plot_when_the_data_exists(compiled):
    _, full = compiled
    page = R.render_html(full)
    assert _plots(page) == set(ALL_PLOTS)
    assert _notes(page) == []
    assert "<title>homec report: kws_cnn.onnx</title>" in page
    # the summary shows the figures of the report
    assert f"{full['before']['nodes']:,}" in page and f"{full['after']['parameters']:,}" in page
    assert "SRAM budget" in page and "estimated latency" in page
    # every pass of the schedule is in the pass table
    for p in full["passes"]:
        assert f"<td>{p['name']}</td>" in page


def test_plots_degrade_to_notes_without_target_data(compiled):
    plain, _ = compiled
    page = R.render_html(plain)
    # the compile report alone has the pass details: pruning, ranks, bit-width needs layers
    assert _plots(page) == {"prune", "rank", "quant_error"}
    notes = " | ".join(_notes(page))
    for what in ("report.layers", "memory_over_schedule", "no placement", "no memory plan", "no estimate"):
        assert what in notes


def test_empty_report_renders():
    page = R.render_html({})
    assert _plots(page) == set()
    assert len(_notes(page)) == 10  # one per plot, and the pass table's "no pass ran"
    assert page.startswith("<!DOCTYPE html>")


def test_deterministic(compiled):
    _, full = compiled
    again = json.loads(json.dumps(full))
    assert R.render_html(full) == R.render_html(again)


def test_text_is_escaped(compiled):
    _, full = compiled
    evil = "<script>alert(1)</script>"
    doc = json.loads(json.dumps(full))
    doc["layers"]["after"][0]["node"] = evil
    doc["manifest"]["placement"]["nodes"][0].update(node=evil, reason=f'"{evil}"', device="cpu")
    doc["warnings"] = [evil]
    doc["input"] = f"/models/{evil}.onnx"
    page = R.render_html(doc)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_no_external_references(compiled):
    _, full = compiled
    page = R.render_html(full)
    for needle in ("http://", "https://", "src=", "@import", "url(", "<script", "<link", "<img"):
        assert needle not in page, needle


def test_a_failed_build_is_reported(tmp_path):
    board = tmp_path / "tiny.toml"
    board.write_text('extends = "npu-int8"\nname = "tiny"\n[memory]\nsram_kib = 4\n')
    with pytest.raises(homec.errors.ResourceLimitError) as info:
        homec.compile(KWS, SCHEDULE, target=str(board))
    report = dict(info.value.report, error={"exit_code": 6, "message": info.value.message})
    page = R.render_html(json.loads(R.to_json(report)))
    assert "build failed (exit 6): SRAM: " in page
    arena, sram = report["after"]["arena_bytes"], 4096
    assert f"4.0 KiB (arena {arena / sram * 100:.0f}%: OVER)" in page
    plan = page[page.index('data-plot="memory_plan"'):]
    assert "<title>SRAM budget 4.0 KiB</title>" in plan[:plan.index("</svg>")]  # within 4x of the arena: drawn


def test_fallback_nodes_are_grouped_by_reason():
    nodes = [{"node": f"q{i}", "op": "QuantizeLinear", "device": "cpu", "dtype": "uint8",
              "reason": f"quantization glue of `add{i}`, on cpu"} for i in range(5)]
    nodes += [{"node": "conv", "op": "Conv", "device": "npu", "dtype": "int8", "reason": None},
              {"node": "div", "op": "Div", "device": "cpu", "dtype": "float32", "reason": "op not supported"}]
    page = R.render_html({"manifest": {"placement": {
        "device": "npu", "fallback": "cpu", "counts": {"npu": 1, "cpu": 6}, "nodes": nodes, "transitions": 2,
        "partitions": [], "unsupported": [{"node": n["node"], "op": n["op"], "reason": n["reason"]}
                                          for n in nodes if n["reason"]]}}})
    assert ("<td>QuantizeLinear</td><td>cpu</td><td>quantization glue of `…`, on cpu</td>"
            "<td class=num>5</td><td>q0, q1, q2 …</td>") in page
    assert "<summary>all 6 nodes off the accelerator</summary>" in page
    assert "Unsupported on the accelerator" not in page  # the same nodes: not listed twice
    assert page.count('<rect x="') == 2 + 3  # legend (2 devices) + runs cpu.., npu, cpu


def test_bit_width_from_quantize_details_and_integer_ops(compiled):
    _, full = compiled
    bits = dict((n, b) for n, _, b in R.layer_bits(full))
    quantized = {r["node"] for p in full["passes"] if p["name"] == "quantize"
                 for r in p["details"]["layer_error"] if r["node"]}
    assert quantized and all(bits[n] == 8 for n in quantized if n in bits)
    doc = json.loads(json.dumps(full))
    doc["passes"] = [p for p in doc["passes"] if p["name"] != "quantize"]
    del doc["manifest"]
    doc["layers"]["after"] = [{"node": "a", "op": "QLinearConv", "macs": 10},
                              {"node": "b", "op": "Conv", "macs": 10},
                              {"node": "c", "op": "MatMul", "macs": 10, "weight_dtype": "int4"}]
    assert R.layer_bits(doc) == [("a", "QLinearConv", 8), ("b", "Conv", 32), ("c", "MatMul", 4)]
    doc["layers"]["after"] = doc["layers"]["after"][1:2]
    assert "bits" not in _plots(R.render_html(doc))  # all float, no quantize pass: a note


def test_macs_plot_matches_layers_by_name():
    doc = {"layers": {"before": [{"node": "conv", "op": "Conv", "macs": 1000},
                                 {"node": "gone", "op": "Conv", "macs": 500}],
                      "after": [{"node": "conv", "op": "Conv", "macs": 400},
                                {"node": "conv_lr", "op": "Conv", "macs": 300}]}}
    page = R.render_html(doc)
    bars = dict(re.findall(r"<title>([^<]*): (?:before|after) [^<]*</title>", page) and
                re.findall(r"<title>(\w+: (?:before|after)) ([^<]*)</title>", page))
    assert bars == {"conv: before": "1k", "conv: after": "400", "gone: before": "500", "gone: after": "0",
                    "conv_lr: before": "0", "conv_lr: after": "300"}


def test_many_layers_are_capped():
    layers = [{"node": f"n{i}", "op": "Conv", "macs": i} for i in range(100)]
    page = R.render_html({"layers": {"before": layers, "after": layers}})
    assert "top 40 of 100" in page
    assert "n99: before" in page and "n59: before" not in page


def test_memory_plan_caps_buffers():
    buffers = [{"name": f"t{i}", "bytes": 16 * (i + 1), "offset": 0, "start": i, "end": i + 1, "alias_of": None}
               for i in range(500)]
    page = R.render_html({"manifest": {"memory": {"arena_bytes": 8000, "buffers": buffers}}})
    assert page.count("at offset") == R.MAX_BUFFERS
    assert "the 400 largest of 500" in page and "t499:" in page and "t0:" not in page


# ---------------------------------------------------------------------------------------
# JSON and writing
# ---------------------------------------------------------------------------------------


def test_json_round_trip_is_strict(compiled, tmp_path):
    plain, full = compiled
    doc = dict(full, extra={"inf": math.inf, "nan": math.nan, "np": np.float32(0.5), "arr": np.arange(3)})
    path = tmp_path / "r.json"
    R.write_report(doc, path)
    text = path.read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert loaded["extra"] == {"inf": "inf", "nan": "nan", "np": 0.5, "arr": [0, 1, 2]}
    del loaded["extra"]
    assert loaded == full
    assert R.to_json(loaded) == R.to_json(full)
    assert text.startswith('{\n  "after": {') and text.endswith("}\n")  # sorted keys, indent 2


def test_write_html_and_bad_suffix(compiled, tmp_path):
    _, full = compiled
    for name in ("r.html", "r.HTM"):
        R.write_report(full, tmp_path / name)
        assert (tmp_path / name).read_text(encoding="utf-8") == R.render_html(full)
    with pytest.raises(UsageError, match="must end in .json or .html"):
        R.write_report(full, tmp_path / "r.txt")
    assert sorted(os.listdir(tmp_path)) == ["r.HTM", "r.html"]  # no temporary left behind


def test_write_errors(compiled, tmp_path):
    _, full = compiled
    with pytest.raises(OutputError, match="does not exist"):
        R.write_report(full, tmp_path / "missing" / "r.json")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        R.write_report(full, tmp_path / "d.json")
    assert sorted(os.listdir(tmp_path)) == ["d.json"]


def test_write_json_any_name(tmp_path):
    R.write_json({"b": 1, "a": [math.inf]}, tmp_path / "model.manifest", what="manifest")
    assert (tmp_path / "model.manifest").read_text() == '{\n  "a": [\n    "inf"\n  ],\n  "b": 1\n}\n'
    with pytest.raises(OutputError, match="manifest folder"):
        R.write_json({}, tmp_path / "no" / "m.json", what="manifest")


def test_write_respects_the_umask(compiled, tmp_path):
    _, full = compiled
    old = os.umask(0o022)
    try:
        R.write_report(full, tmp_path / "r.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "r.json").st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file(compiled, tmp_path, monkeypatch):
    _, full = compiled
    path = tmp_path / "r.html"
    path.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(R.os, "replace", fail)
    with pytest.raises(OutputError, match="No space left on device"):
        R.write_report(full, path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["r.html"]


def test_cli_report_is_strict_json(tmp_path):
    from homec.cli import _write_report

    path = tmp_path / "r.json"
    _write_report({"tolerance": {"atol": math.inf}}, str(path))
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))


# ---------------------------------------------------------------------------------------
# Headless Chromium
# ---------------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("HOMEC_ALLOW_NO_BROWSER") == "1":
        pytest.skip("no chromium (HOMEC_ALLOW_NO_BROWSER=1)")
    pytest.fail("chromium is not installed (apt-get install chromium); set HOMEC_ALLOW_NO_BROWSER=1 to skip")


def _run_chromium(browser: str, profile, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _png_pixels(data: bytes) -> tuple[int, int, np.ndarray]:
    """Width, height and the RGB(A) rows of an 8-bit non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int64)
    for y in range(height):  # undo the per-row filters (PNG spec 9.2)
        f, row = raw[y, 0], raw[y, 1:].astype(np.int64)
        if f == 0:
            cur = row
        elif f == 1:  # Sub: a running sum per channel
            cur = np.cumsum(row.reshape(width, bpp), axis=0).reshape(-1) & 0xFF
        elif f == 2:  # Up
            cur = (row + prev) & 0xFF
        else:  # Average, Paeth: sequential along the row
            r, b, c = row.tolist(), prev.tolist(), [0] * bpp + prev.tolist()[:-bpp]
            cur_l = [0] * len(r)
            for x in range(len(r)):
                a = cur_l[x - bpp] if x >= bpp else 0
                if f == 3:
                    pred = (a + b[x]) // 2
                else:
                    p = a + b[x] - c[x]
                    pa, pb, pc = abs(p - a), abs(p - b[x]), abs(p - c[x])
                    pred = a if pa <= pb and pa <= pc else (b[x] if pb <= pc else c[x])
                cur_l[x] = (r[x] + pred) & 0xFF
            cur = np.array(cur_l, dtype=np.int64)
        out[y], prev = cur, cur
    return width, height, out.reshape(height, width, bpp)


@pytest.mark.slow
def test_renders_in_headless_chromium(compiled, tmp_path):
    browser = _chromium()
    _, full = compiled
    page = tmp_path / "report.html"
    R.write_report(full, page)
    profile = tmp_path / "profile"
    dom = _run_chromium(browser, profile, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>homec report: kws_cnn.onnx</title>" in dom.stdout
    assert _plots(dom.stdout) == set(ALL_PLOTS)
    assert dom.stdout.count("<rect") > 100

    shot = tmp_path / "shot.png"
    run = _run_chromium(browser, profile, f"--screenshot={shot}", "--window-size=1280,2000",
                        "--hide-scrollbars", page.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    if os.environ.get("HOMEC_SCREENSHOT_DIR"):
        os.makedirs(os.environ["HOMEC_SCREENSHOT_DIR"], exist_ok=True)
        shutil.copy(shot, os.path.join(os.environ["HOMEC_SCREENSHOT_DIR"], "homec-report.png"))
    width, height, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    rgb = pixels[..., :3]
    colours = {tuple(c) for c in rgb[::8, ::8].reshape(-1, 3)}
    assert len(colours) > 20, "the screenshot is (nearly) blank"
    # the plots' bars are drawn: the "after" blue is on the page
    after = np.array([int(R.AFTER_COLOUR[i:i + 2], 16) for i in (1, 3, 5)])
    assert (np.abs(rgb - after).sum(axis=-1) == 0).sum() > 500


def test_mcu_runs_quantized_convs_with_bias():
    report = homec.compile(KWS, "schedule { cleanup }", target="mcu").report
    assert report["manifest"]["placement"]["unsupported"] == []
