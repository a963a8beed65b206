"""Draw the demo's logo and example media (run from anywhere; the outputs are committed).

    python assets/make_examples.py

Everything is generated with Pillow and PyAV, so the examples carry no licence of their own and
no download is needed. The grounding example (`park.png`) places the cat inside (100,200)-(500,800)
and the ball inside (640,600)-(860,860) on Qwen2-VL's 0-1000 grid.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageDraw, ImageFont

ASSETS = Path(__file__).resolve().parent
SIZE = (448, 336)  # 4:3, a multiple of 28 on each side, so the model sees it unresized
VIDEO_SIZE = (224, 168)
VIDEO_FPS = 10
VIDEO_SECONDS = 3

LOGO_SVG = """\
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64">
  <title>Qwen2-VL demo</title>
  <defs>
    <linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
      <stop offset="0" stop-color="#7c6cf2"/>
      <stop offset="1" stop-color="#4f46e5"/>
    </linearGradient>
  </defs>
  <rect x="2" y="2" width="60" height="60" rx="14" fill="url(#g)"/>
  <g fill="none" stroke="#ffffff" stroke-width="4" stroke-linecap="round">
    <path d="M14 24v-8a2 2 0 0 1 2-2h8M40 14h8a2 2 0 0 1 2 2v8"/>
    <path d="M50 40v8a2 2 0 0 1-2 2h-8M24 50h-8a2 2 0 0 1-2-2v-8"/>
  </g>
  <ellipse cx="32" cy="32" rx="13" ry="9" fill="#ffffff"/>
  <circle cx="32" cy="32" r="5.5" fill="#4f46e5"/>
  <circle cx="34" cy="30" r="1.8" fill="#ffffff"/>
</svg>
"""


def _grid(box: tuple[int, int, int, int], size: tuple[int, int] = SIZE) -> tuple[int, ...]:
    """Pixel box from 0-1000 grid coordinates (x1, y1, x2, y2)."""
    w, h = size
    x1, y1, x2, y2 = box
    return (x1 * w // 1000, y1 * h // 1000, x2 * w // 1000, y2 * h // 1000)


def draw_cat(draw: ImageDraw.ImageDraw, box: tuple[int, ...]) -> None:
    """A sitting orange cat filling most of `box` (pixels)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    fur, dark = (240, 150, 60), (150, 80, 30)
    draw.ellipse((x1 + w * 0.18, y1 + h * 0.38, x2 - w * 0.12, y2), fill=fur, outline=dark, width=2)
    tail = [(x2 - w * 0.2, y2 - h * 0.1), (x2, y2 - h * 0.35), (x2 - w * 0.05, y1 + h * 0.45)]
    draw.line(tail, fill=dark, width=max(3, w // 18), joint="curve")
    head = (x1 + w * 0.1, y1 + h * 0.08, x1 + w * 0.62, y1 + h * 0.5)
    hx1, hy1, hx2, hy2 = head
    draw.polygon([(hx1 + 4, hy1 + 18), (hx1 + 10, y1), (hx1 + 32, hy1 + 8)], fill=fur, outline=dark)
    draw.polygon([(hx2 - 4, hy1 + 18), (hx2 - 10, y1), (hx2 - 32, hy1 + 8)], fill=fur, outline=dark)
    draw.ellipse(head, fill=fur, outline=dark, width=2)
    cx, cy = (hx1 + hx2) / 2, (hy1 + hy2) / 2
    for dx in (-0.22, 0.22):
        ex = cx + dx * (hx2 - hx1)
        draw.ellipse((ex - 6, cy - 8, ex + 6, cy + 4), fill=(40, 120, 40))
        draw.ellipse((ex - 2, cy - 6, ex + 2, cy + 2), fill=(0, 0, 0))
    draw.polygon([(cx - 5, cy + 10), (cx + 5, cy + 10), (cx, cy + 16)], fill=(230, 90, 120))
    for side in (-1, 1):
        for dy in (10, 16):
            draw.line((cx + side * 8, cy + dy + 2, cx + side * 40, cy + dy - 4), fill=dark, width=1)


def park() -> Image.Image:
    """A cat and a red ball on a lawn: the grounding and image-question example."""
    image = Image.new("RGB", SIZE, (150, 200, 245))
    draw = ImageDraw.Draw(image)
    w, h = SIZE
    draw.rectangle((0, h * 0.55, w, h), fill=(110, 180, 90))
    draw.ellipse((w * 0.78, h * 0.05, w * 0.92, h * 0.24), fill=(255, 220, 80))
    draw.rectangle((w * 0.58, h * 0.2, w * 0.62, h * 0.58), fill=(120, 80, 40))
    draw.ellipse((w * 0.5, h * 0.02, w * 0.7, h * 0.32), fill=(60, 140, 60))
    draw_cat(draw, _grid((110, 210, 490, 790)))
    bx1, by1, bx2, by2 = _grid((650, 610, 850, 850))
    draw.ellipse((bx1, by1, bx2, by2), fill=(220, 30, 40), outline=(120, 10, 20), width=2)
    draw.arc((bx1 + 8, by1 + 8, bx2 - 8, by2 - 8), 200, 260, fill=(255, 200, 200), width=3)
    return image


def shapes(variant: int) -> Image.Image:
    """Three shapes on a table; variant 2 moves one, recolours one and adds a star."""
    image = Image.new("RGB", SIZE, (250, 246, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 250, SIZE[0], SIZE[1]), fill=(205, 170, 125))
    draw.ellipse((40, 150, 140, 250), fill=(220, 50, 50))
    square = (190, 150, 290, 250) if variant == 1 else (200, 60, 300, 160)
    draw.rectangle(square, fill=(40, 90, 210))
    triangle_colour = (40, 170, 80) if variant == 1 else (250, 190, 30)
    draw.polygon([(330, 250), (420, 250), (375, 160)], fill=triangle_colour)
    if variant == 2:
        cx, cy, r = 100, 70, 40
        points = [
            (cx + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
             cy - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5))
            for i in range(10)
        ]  # fmt: skip
        draw.polygon(points, fill=(150, 60, 190))
    font = ImageFont.load_default(size=22)
    draw.text((12, 300), f"Picture {variant}", fill=(60, 40, 20), font=font)
    return image


def bar_chart() -> Image.Image:
    """Visitors per weekday: a readable chart for a plain image question."""
    image = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=20), ImageFont.load_default(size=15)
    draw.text((20, 12), "Museum visitors per day", fill=(30, 30, 30), font=font)
    values = {"Mon": 120, "Tue": 180, "Wed": 150, "Thu": 240, "Fri": 90}
    base, left, step = 300, 50, 78
    draw.line((left - 10, base, SIZE[0] - 20, base), fill=(80, 80, 80), width=2)
    for i, (day, value) in enumerate(values.items()):
        x = left + i * step
        draw.rectangle((x, base - value, x + 50, base), fill=(79, 70, 229))
        draw.text((x + 8, base + 8), day, fill=(30, 30, 30), font=small)
        draw.text((x + 10, base - value - 20), str(value), fill=(30, 30, 30), font=small)
    return image


def ball_frames() -> list[Image.Image]:
    """A ball bouncing from left to right, VIDEO_SECONDS long."""
    frames, w, h = [], *VIDEO_SIZE
    count = VIDEO_FPS * VIDEO_SECONDS
    for i in range(count):
        t = i / (count - 1)
        x = 20 + t * (w - 40)
        y = h - 40 - abs(math.sin(t * 3 * math.pi)) * (h - 80)
        frame = Image.new("RGB", VIDEO_SIZE, (150, 200, 245))
        draw = ImageDraw.Draw(frame)
        draw.rectangle((0, h - 24, w, h), fill=(110, 180, 90))
        draw.ellipse((x - 16, y - 16, x + 16, y + 16), fill=(220, 30, 40))
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[Image.Image]) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(VIDEO_FPS))
        stream.width, stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "preset": "veryslow"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode(None))


def main() -> None:
    (ASSETS / "logo.svg").write_text(LOGO_SVG)
    examples = ASSETS / "examples"
    examples.mkdir(exist_ok=True)
    park().save(examples / "park.png", optimize=True)
    bar_chart().save(examples / "chart.png", optimize=True)
    for variant in (1, 2):
        shapes(variant).save(examples / f"shapes_{variant}.png", optimize=True)
    write_video(examples / "ball.mp4", ball_frames())
    for path in sorted([ASSETS / "logo.svg", *examples.iterdir()]):
        print(f"{path.relative_to(ASSETS)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
