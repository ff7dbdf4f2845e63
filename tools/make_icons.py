"""Draw the console's icons (a terminal prompt ``>_`` on the accent blue) as PNG files, with no
image library: signed distances, one sample per pixel, anti-aliased edges.

    python tools/make_icons.py        # writes arp/client/command/static/icon-*.png

``icon.svg`` beside them is the same drawing, by hand.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "arp" / "client" / "command" / "static"
BLUE = (0x2F, 0x6B, 0xD9)
WHITE = (0xFF, 0xFF, 0xFF)
CHEVRON = [(0.30, 0.34), (0.47, 0.50), (0.30, 0.66)]
BAR = [(0.53, 0.66), (0.71, 0.66)]
STROKE = 0.055  # half the line width, in units of the icon's side
RADIUS = 0.22  # corner radius of the rounded square


def png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def segment_distance(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    ax, ay = a
    bx, by = b
    px, py = p
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - ax - t * dx, py - ay - t * dy)


def rounded_square_distance(p: tuple[float, float], radius: float) -> float:
    """Signed distance to the unit square with rounded corners (negative inside)."""
    qx = abs(p[0] - 0.5) - (0.5 - radius)
    qy = abs(p[1] - 0.5) - (0.5 - radius)
    outside = math.hypot(max(qx, 0.0), max(qy, 0.0))
    return outside + min(max(qx, qy), 0.0) - radius


def glyph_distance(p: tuple[float, float], scale: float) -> float:
    """Distance to the ``>_`` strokes, drawn at ``scale`` around the centre."""
    q = ((p[0] - 0.5) / scale + 0.5, (p[1] - 0.5) / scale + 0.5)
    strokes = [(CHEVRON[0], CHEVRON[1]), (CHEVRON[1], CHEVRON[2]), (BAR[0], BAR[1])]
    return (min(segment_distance(q, a, b) for a, b in strokes) - STROKE) * scale


def draw(size: int, *, radius: float, scale: float, badge: bool = False) -> bytes:
    """One icon: ``radius`` 0 for a full-bleed square (maskable, Apple), ``badge`` for the white
    glyph alone on transparency (Android's status bar)."""
    rows = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            p = ((x + 0.5) / size, (y + 0.5) / size)
            ink = min(1.0, max(0.0, 0.5 - glyph_distance(p, scale) * size))
            if badge:
                row += bytes((*WHITE, round(255 * ink)))
                continue
            fill = 1.0 if radius == 0 else min(1.0, max(0.0, 0.5 - rounded_square_distance(p, radius) * size))
            color = [round(b * (1 - ink) + w * ink) for b, w in zip(BLUE, WHITE)]
            row += bytes((*color, round(255 * fill)))
        rows.append(bytes(row))
    return png(size, size, rows)


ICONS = {
    "icon-192.png": dict(size=192, radius=RADIUS, scale=1.0),
    "icon-512.png": dict(size=512, radius=RADIUS, scale=1.0),
    "icon-maskable-512.png": dict(size=512, radius=0, scale=0.72),  # inside the 80 % safe zone
    "icon-180.png": dict(size=180, radius=0, scale=0.9),  # apple-touch-icon: iOS rounds it
    "icon-badge-96.png": dict(size=96, radius=0, scale=1.25, badge=True),
}


def main() -> None:
    for name, spec in ICONS.items():
        (STATIC / name).write_bytes(draw(**spec))
        print("wrote", STATIC / name)


if __name__ == "__main__":
    main()
