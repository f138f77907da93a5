"""Deterministic rendering of appliance-style label images (PIL + OpenCV, seeded).

Each image holds 1-3 short lines ("WASH 40°C", "Spin 1200 rpm", "Model WM-8472B", ...), one line
per row, in one of several fonts, on a light background, with photo-like degradations: uneven
lighting, a slight tint, optional label frame, rotation within ±3°, mild blur, sensor noise and
JPEG re-encoding. Returns BGR uint8 arrays (what RapidOCR gets from cv2.imread) with the ground-truth
lines top to bottom.

Determinism: image i of a set is drawn from its own generator, seeded by
SeedSequence([seed, stream, i]); `eval_set` and `calib_set` use different streams, so the two sets
never share an image even with the same seed, and `eval_set(n=10)` is the first 10 images of
`eval_set(n=150)`. The font is drawn from the fixed table FONTS whatever is installed; a face whose
file is missing is replaced by its DejaVu stand-in (same random stream, different glyphs) and
`fonts_status()` says so. For the full set install the Debian packages fonts-dejavu-core,
fonts-dejavu-extra, fonts-liberation2 and fonts-freefont-ttf.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

EVAL_STREAM = 0
CALIB_STREAM = 1
DEFAULT_EVAL_SEED = 20240601
DEFAULT_CALIB_SEED = 20240602

_DV = "/usr/share/fonts/truetype/dejavu/"
_LIB = "/usr/share/fonts/truetype/liberation2/"
_FREE = "/usr/share/fonts/truetype/freefont/"

# (file, DejaVu stand-in used when the file is absent). The order is part of the data set.
FONTS: tuple[tuple[str, str], ...] = (
    (_DV + "DejaVuSans.ttf", _DV + "DejaVuSans.ttf"),
    (_DV + "DejaVuSans-Bold.ttf", _DV + "DejaVuSans-Bold.ttf"),
    (_DV + "DejaVuSansCondensed.ttf", _DV + "DejaVuSans.ttf"),
    (_DV + "DejaVuSansCondensed-Bold.ttf", _DV + "DejaVuSans-Bold.ttf"),
    (_DV + "DejaVuSerif.ttf", _DV + "DejaVuSerif.ttf"),
    (_DV + "DejaVuSerif-Bold.ttf", _DV + "DejaVuSerif-Bold.ttf"),
    (_DV + "DejaVuSerifCondensed.ttf", _DV + "DejaVuSerif.ttf"),
    (_DV + "DejaVuSansMono.ttf", _DV + "DejaVuSansMono.ttf"),
    (_DV + "DejaVuSansMono-Bold.ttf", _DV + "DejaVuSansMono-Bold.ttf"),
    (_DV + "DejaVuSans-Oblique.ttf", _DV + "DejaVuSans.ttf"),
    (_LIB + "LiberationSans-Regular.ttf", _DV + "DejaVuSans.ttf"),
    (_LIB + "LiberationSans-Bold.ttf", _DV + "DejaVuSans-Bold.ttf"),
    (_LIB + "LiberationSerif-Regular.ttf", _DV + "DejaVuSerif.ttf"),
    (_LIB + "LiberationMono-Regular.ttf", _DV + "DejaVuSansMono.ttf"),
    (_LIB + "LiberationMono-Bold.ttf", _DV + "DejaVuSansMono-Bold.ttf"),
    (_FREE + "FreeSans.ttf", _DV + "DejaVuSans.ttf"),
    (_FREE + "FreeSansBold.ttf", _DV + "DejaVuSans-Bold.ttf"),
    (_FREE + "FreeSerif.ttf", _DV + "DejaVuSerif.ttf"),
    (_FREE + "FreeMonoBold.ttf", _DV + "DejaVuSansMono-Bold.ttf"),
)


class Sample(NamedTuple):
    """One rendered label: `image` is BGR uint8 (H, W, 3), `lines` the text top to bottom."""

    image: np.ndarray
    lines: list[str]


# --------------------------------------------------------------------------- fonts

def fonts_status() -> dict[str, str]:
    """Each face of FONTS -> its own path if installed, else 'substituted by <stand-in>'."""
    out = {}
    for path, stand_in in FONTS:
        out[os.path.basename(path)] = path if os.path.exists(path) else (
            f"substituted by {os.path.basename(stand_in)}")
    return out


@functools.lru_cache(maxsize=None)
def _resolve(index: int) -> str:
    path, stand_in = FONTS[index]
    if os.path.exists(path):
        return path
    if not os.path.exists(stand_in):
        raise FileNotFoundError(f"neither {path} nor its stand-in {stand_in} is installed "
                                "(apt-get install fonts-dejavu-core fonts-dejavu-extra)")
    warnings.warn(f"font {path} not installed, using {stand_in} (the rendered set differs from "
                  "the reference one; install fonts-liberation2 fonts-freefont-ttf)", stacklevel=3)
    return stand_in


@functools.lru_cache(maxsize=512)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(_resolve(index), size=size, layout_engine=ImageFont.Layout.BASIC)


# --------------------------------------------------------------------------- text

_PROGRAMS = ["Wash", "Cotton", "Synthetics", "Wool", "Delicates", "Mix", "Quick", "Eco",
             "Baby Care", "Sportswear", "Outdoor", "Bedding", "Shirts", "Hand Wash", "Intensive",
             "Auto", "Glass", "Pots", "Hygiene", "Jeans"]
_FIXED = ["Door locked", "Filter: clean", "Rinse+", "Child lock", "Descale", "Steam", "Pre-wash",
          "Extra Rinse", "Start/Pause", "Auto Dose", "Low Salt", "Add rinse aid", "Refill salt",
          "Drain pump", "Tank empty", "Clean filter!", "Anti-crease", "Night mode", "Super Cool",
          "Vacation", "Keep warm", "Fan + Grill", "Defrost", "Ice maker ON", "Wi-Fi", "Eco mode",
          "Power save", "Alarm off", "Water tap closed?", "Lock 3s", "Ready", "End", "Pause",
          "Half load", "Turbo Dry", "Fresh Air", "Dual Zone"]
_BRANDS = ["WM", "DW", "RF", "TD", "MW", "OV", "AC", "HB", "FR", "WD", "KF", "VX"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_UPPER = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I/O: they look like 1/0 on real plates too


def _digits(rng: np.random.Generator, k: int) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, size=k))


def _letters(rng: np.random.Generator, k: int) -> str:
    return "".join(_UPPER[int(i)] for i in rng.integers(0, len(_UPPER), size=k))


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(0, len(seq)))]


def _t_program(rng):
    return f"{_pick(rng, _PROGRAMS)} {_pick(rng, [20, 30, 40, 60, 90])}°C"


def _t_time(rng):
    return f"{_pick(rng, ['Eco', 'Auto', 'Quick', 'Remaining', 'Delay', 'Ends in', 'Time'])} " \
           f"{int(rng.integers(0, 4))}:{int(rng.integers(0, 60)):02d}{_pick(rng, ['h', '', ' h'])}"


def _t_spin(rng):
    return f"Spin {_pick(rng, [400, 600, 800, 1000, 1200, 1400, 1600])} rpm"


def _t_temp(rng):
    t = int(rng.integers(-24, 9))
    return f"{_pick(rng, ['Temp', 'Freezer', 'Fridge', 'Set', 'Zone 2'])} {t} " \
           f"{_pick(rng, ['C', '°C'])}".replace(" °C", "°C")


def _t_error(rng):
    return f"{_pick(rng, ['Error', 'Err', 'Fault', 'Code'])} " \
           f"{_pick(rng, ['E', 'F', 'H', 'C'])}{int(rng.integers(1, 100)):02d}"


def _t_serial(rng):
    form = int(rng.integers(0, 3))
    if form == 0:
        return f"S/N {_digits(rng, 7)}-{_digits(rng, 2)}"
    if form == 1:
        return f"SN: {_letters(rng, 2)}{_digits(rng, 6)}{_letters(rng, 1)}"
    return f"Serial No. {_digits(rng, 4)} {_digits(rng, 4)}"


def _t_date(rng):
    y, m, d = int(rng.integers(2015, 2026)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    form = int(rng.integers(0, 3))
    if form == 0:
        return f"Mfd {y}-{m:02d}-{d:02d}"
    if form == 1:
        return f"Date: {d:02d}.{m:02d}.{y}"
    return f"{d} {_MONTHS[m - 1]} {y}"


def _t_model(rng):
    code = f"{_pick(rng, _BRANDS)}-{_digits(rng, 4)}{_letters(rng, 1)}"
    return f"{_pick(rng, ['Model ', 'Type ', 'Mod. ', ''])}{code}"


def _t_power(rng):
    form = int(rng.integers(0, 4))
    if form == 0:
        return f"{_pick(rng, ['220-240', '230', '110-120'])}V ~ {_pick(rng, [50, 60])}Hz"
    if form == 1:
        return f"Power {_pick(rng, [800, 1200, 1800, 2100, 2400])}W"
    if form == 2:
        return f"Capacity {_pick(rng, [6, 7, 8, 9, 10])} kg"
    return f"{_pick(rng, ['IPX4', 'IP X4', 'Class A+++', 'Class B', '10A max'])}"


def _t_fixed(rng):
    return _pick(rng, _FIXED)


def _t_misc(rng):
    form = int(rng.integers(0, 4))
    if form == 0:
        return f"Level {int(rng.integers(1, 8))}/7"
    if form == 1:
        return f"P/N {_digits(rng, 2)}-{_digits(rng, 4)}-{_digits(rng, 2)}"
    if form == 2:
        return f"Water hardness {int(rng.integers(1, 5))}"
    return f"Rev. {_letters(rng, 1)}{int(rng.integers(1, 10))}"


_GENERATORS: tuple[Callable[[np.random.Generator], str], ...] = (
    _t_program, _t_time, _t_spin, _t_temp, _t_error, _t_serial, _t_date, _t_model, _t_power,
    _t_fixed, _t_fixed, _t_misc)


def _line(rng: np.random.Generator) -> str:
    text = _pick(rng, _GENERATORS)(rng)
    case = float(rng.random())
    if case < 0.2:
        text = text.upper()
    elif case < 0.27:
        text = text.lower()
    return text


# --------------------------------------------------------------------------- image

def render_sample(rng: np.random.Generator) -> Sample:
    """Render one label from `rng` (consumes it)."""
    n_lines = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    lines = [_line(rng) for _ in range(n_lines)]
    font_index = int(rng.integers(0, len(FONTS)))
    base_size = int(rng.integers(20, 46))
    sizes = [base_size] + [max(16, int(base_size * rng.uniform(0.7, 1.0))) for _ in lines[1:]]
    fonts = [_font(font_index, s) for s in sizes]
    align = _pick(rng, ["left", "center"])

    bboxes = [f.getbbox(t) for f, t in zip(fonts, lines)]          # (l, t, r, b) at origin
    widths = [b[2] - b[0] for b in bboxes]
    heights = [b[3] - b[1] for b in bboxes]
    gaps = [int(s * rng.uniform(0.55, 1.1)) for s in sizes[1:]]
    mx = int(rng.integers(12, 48))
    my = int(rng.integers(10, 36))
    width = max(widths) + 2 * mx
    height = sum(heights) + sum(gaps) + 2 * my

    # background: light, slightly tinted, with a lighting gradient
    bg = np.array([rng.integers(205, 256) for _ in range(3)], dtype=np.float32)
    tint = rng.uniform(-12, 12, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * xx / width + np.sin(ang) * yy / height)
    light = 1.0 - rng.uniform(0.0, 0.18) * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    canvas = (np.clip(bg + tint, 180, 255)[None, None, :] * light[..., None])
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    pil = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(pil)

    if rng.random() < 0.35:   # text colour: mostly near-black, sometimes dark blue/red/green/grey
        ink = tuple(int(v) for v in _pick(rng, [(20, 30, 110), (130, 20, 20), (20, 80, 40),
                                                (70, 70, 70)]))
    else:
        k = int(rng.integers(0, 60))
        ink = (k, k, k)
    if rng.random() < 0.4:    # printed label frame
        inset = int(rng.integers(3, max(4, min(mx, my) // 2 + 1)))
        draw.rectangle([inset, inset, width - 1 - inset, height - 1 - inset], outline=ink,
                       width=int(rng.integers(1, 3)))

    y = my
    for text, font, bb, w, h, k in zip(lines, fonts, bboxes, widths, heights, range(n_lines)):
        x = mx if align == "left" else (width - w) // 2
        draw.text((x - bb[0], y - bb[1]), text, font=font, fill=ink)
        y += h + (gaps[k] if k < len(gaps) else 0)

    img = cv2.cvtColor(np.asarray(pil), cv2.COLOR_RGB2BGR)

    # rotation within ±3°, on a canvas grown to keep the corners
    deg = float(rng.uniform(-3.0, 3.0))
    m = cv2.getRotationMatrix2D((width / 2, height / 2), deg, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(height * sin + width * cos + 0.5), int(height * cos + width * sin + 0.5)
    m[0, 2] += nw / 2 - width / 2
    m[1, 2] += nh / 2 - height / 2
    img = cv2.warpAffine(img, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    sigma = float(rng.uniform(0.0, 1.1))
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = rng.normal(0.0, float(rng.uniform(1.0, 7.0)), size=img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    quality = int(rng.integers(55, 96))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return Sample(np.ascontiguousarray(img), lines)


def _make_set(n: int, seed: int, stream: int) -> list[Sample]:
    if n < 0:
        raise ValueError("n must be >= 0")
    return [render_sample(np.random.default_rng(np.random.SeedSequence([seed, stream, i])))
            for i in range(n)]


def eval_set(n: int = 150, seed: int = DEFAULT_EVAL_SEED) -> list[Sample]:
    """`n` evaluation labels; image i depends only on (seed, i), so smaller n gives a prefix."""
    return _make_set(n, seed, EVAL_STREAM)


def calib_set(n: int = 48, seed: int = DEFAULT_CALIB_SEED) -> list[Sample]:
    """`n` calibration labels from a stream disjoint from `eval_set`'s for any pair of seeds."""
    return _make_set(n, seed, CALIB_STREAM)


def fingerprint(samples: list[Sample]) -> str:
    """Short hash of the images and texts, to check two machines render the same set."""
    import hashlib
    h = hashlib.sha256()
    for s in samples:
        h.update(np.ascontiguousarray(s.image).tobytes())
        h.update(repr(s.image.shape).encode())
        h.update("\n".join(s.lines).encode() + b"\0")
    return h.hexdigest()[:16]


def save_contact_sheet(samples: list[Sample], path: str, cols: int = 4) -> None:
    """Write a PNG grid of the samples (for looking at the set)."""
    cell_w = max(s.image.shape[1] for s in samples)
    tiles = []
    for s in samples:
        h, w = s.image.shape[:2]
        tile = np.full((h + 8, cell_w + 8, 3), 127, np.uint8)
        tile[4:4 + h, 4:4 + w] = s.image
        tiles.append(tile)
    rows = []
    for r in range(0, len(tiles), cols):
        row = tiles[r:r + cols]
        hmax = max(t.shape[0] for t in row)
        row = [np.pad(t, ((0, hmax - t.shape[0]), (0, 0), (0, 0)), constant_values=127) for t in row]
        row += [np.full((hmax, cell_w + 8, 3), 127, np.uint8)] * (cols - len(row))
        rows.append(np.concatenate(row, axis=1))
    cv2.imwrite(path, np.concatenate(rows, axis=0))
