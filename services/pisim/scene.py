"""A synthetic camera scene: shapes drifting over a textured background, with a cut to a
different scene every ``scene_every`` seconds. Deterministic: the same seed and time give
the same picture, so tests and demos can rely on what the camera "sees".

numpy draws the textures and the sensor noise (JPEGs of flat colour look nothing like a
camera's), Pillow draws the shapes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

NOISE_PAD = 32  # the per-frame sensor noise is a window moved around a larger noise field
NOISE_LEVEL = 6  # +- grey levels of sensor noise


@dataclass(frozen=True)
class Shape:
    kind: str  # ellipse, rectangle or triangle
    colour: tuple[int, int, int]
    outline: tuple[int, int, int]
    size: tuple[float, float]
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per second
    spin: float  # radians per second (triangles)


class SyntheticScene:
    """``render(t, index)``: the picture at ``t`` seconds into the stream."""

    def __init__(self, width: int, height: int, *, seed: int = 0, scene_every: float = 4.0) -> None:
        self.width, self.height = width, height
        self.seed = seed
        self.scene_every = scene_every
        rng = np.random.default_rng([seed, 0x5EED])
        self._noise = rng.integers(
            -NOISE_LEVEL, NOISE_LEVEL + 1, size=(height + NOISE_PAD, width + NOISE_PAD, 3), dtype=np.int16
        )
        self._scenes: dict[int, tuple[Image.Image, list[Shape]]] = {}
        self._lock = threading.Lock()  # clients render from their own threads

    def scene_at(self, t: float) -> int:
        return int(t // self.scene_every)

    def render(self, t: float, index: int = 0) -> Image.Image:
        """The frame ``index`` of a stream, ``t`` seconds after the stream started."""
        number = self.scene_at(t)
        background, shapes = self._scene(number)
        img = background.copy()
        draw = ImageDraw.Draw(img)
        local_t = t - number * self.scene_every
        for shape in shapes:
            self._draw(draw, shape, local_t)
        # Sensor noise that changes every frame: consecutive frames are never identical.
        dy = (index * 7) % NOISE_PAD
        dx = (index * 13) % NOISE_PAD
        pixels = np.asarray(img, dtype=np.int16) + self._noise[dy : dy + self.height, dx : dx + self.width]
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    # -- scenes ----------------------------------------------------------------------------------

    def _scene(self, number: int) -> tuple[Image.Image, list[Shape]]:
        with self._lock:
            scene = self._scenes.get(number)
            if scene is None:
                scene = self._make_scene(number)
                self._scenes[number] = scene
                while len(self._scenes) > 4:  # clients are at most a few scenes apart
                    del self._scenes[min(self._scenes)]
            return scene

    def _make_scene(self, number: int) -> tuple[Image.Image, list[Shape]]:
        rng = np.random.default_rng([self.seed, number])
        w, h = self.width, self.height
        # Background: a gradient between two random colours...
        c0, c1 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        g = xs * math.cos(angle) / w + ys * math.sin(angle) / h
        g = (g - g.min()) / max(1e-6, float(g.max() - g.min()))
        base = c0 * (1 - g[..., None]) + c1 * g[..., None]
        # ...with soft blotches (a coarse random grid, upsampled smoothly)...
        grid = rng.integers(0, 256, size=(int(rng.integers(3, 8)), int(rng.integers(4, 10)), 3), dtype=np.uint8)
        blotches = np.asarray(Image.fromarray(grid, "RGB").resize((w, h), Image.Resampling.BICUBIC), np.float32)
        base += (blotches - 128) * rng.uniform(0.15, 0.35)
        # ...stripes of random frequency and direction, and fine grain.
        freq = rng.uniform(4, 24) * 2 * math.pi
        phi = rng.uniform(0, 2 * math.pi)
        base += 10 * np.sin(freq * (xs * math.sin(phi) / w + ys * math.cos(phi) / h))[..., None]
        base += rng.normal(0, 8, size=(h, w, 1))
        background = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")

        shapes = []
        side = min(w, h)
        for _ in range(int(rng.integers(3, 8))):
            r, g, b = (int(c) for c in rng.integers(0, 256, 3))
            colour = (r, g, b)
            sw, sh = (float(v) for v in rng.uniform(0.1, 0.3, 2) * side)
            shapes.append(
                Shape(
                    kind=str(rng.choice(["ellipse", "rectangle", "triangle"])),
                    colour=colour,
                    outline=(max(0, r - 80), max(0, g - 80), max(0, b - 80)),
                    size=(sw, sh),
                    start=(float(rng.uniform(0, max(1.0, w - sw))), float(rng.uniform(0, max(1.0, h - sh)))),
                    velocity=(float(rng.uniform(-0.3, 0.3) * w), float(rng.uniform(-0.3, 0.3) * h)),
                    spin=float(rng.uniform(-2, 2)),
                )
            )
        return background, shapes

    def _draw(self, draw: ImageDraw.ImageDraw, shape: Shape, t: float) -> None:
        sw, sh = shape.size
        x = _bounce(shape.start[0] + shape.velocity[0] * t, max(1.0, self.width - sw))
        y = _bounce(shape.start[1] + shape.velocity[1] * t, max(1.0, self.height - sh))
        box = (x, y, x + sw, y + sh)
        if shape.kind == "ellipse":
            draw.ellipse(box, fill=shape.colour, outline=shape.outline, width=3)
        elif shape.kind == "rectangle":
            draw.rectangle(box, fill=shape.colour, outline=shape.outline, width=3)
        else:
            cx, cy, r = x + sw / 2, y + sh / 2, min(sw, sh) / 2
            a = shape.spin * t
            points = [
                (cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
                for k in range(3)
            ]
            draw.polygon(points, fill=shape.colour, outline=shape.outline)


def _bounce(pos: float, span: float) -> float:
    """A position moving freely, folded back into [0, span] as if bouncing off the edges."""
    pos = pos % (2 * span)
    return 2 * span - pos if pos > span else pos
