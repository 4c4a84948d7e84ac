"""Drawing of toy-world scenes: each object is its category's glyph in its colour, on a noisy grey ground."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .glyphs import glyph
from .toy import PALETTE, Scene, ToyWorldConfig

BACKGROUND_LEVEL = 40  # grey level of the background before noise, dark so that every palette colour contrasts with it


class GlyphSet:
    """The glyphs of a config's categories, scaled to `glyph_size` pixels."""

    def __init__(self, config: ToyWorldConfig) -> None:
        self.size = config.glyph_size
        self._bitmaps = {name: self._scaled(glyph(name)) for name in config.categories}

    def _scaled(self, bitmap: np.ndarray) -> np.ndarray:
        if bitmap.shape == (self.size, self.size):
            return bitmap
        image = Image.fromarray(bitmap.astype(np.uint8) * 255).resize((self.size, self.size), Image.Resampling.NEAREST)
        return np.asarray(image) > 127

    def __getitem__(self, name: str) -> np.ndarray:
        return self._bitmaps[name]


def glyph_origin(config: ToyWorldConfig, cell: int, offset: tuple[int, int]) -> tuple[int, int]:
    """Return the (x, y) pixel of a glyph's top-left corner in a grid cell."""
    half = config.image_size // 2
    margin = (half - config.glyph_size) // 2
    return (cell % 2) * half + margin + offset[0], (cell // 2) * half + margin + offset[1]


def render_scene(config: ToyWorldConfig, scene: Scene, glyphs: GlyphSet) -> tuple[np.ndarray, list[list[float]]]:
    """Draw a scene; return the (H, W, 3) uint8 image and one tight COCO bbox [x, y, w, h] per object."""
    size = config.image_size
    rng = np.random.default_rng([config.seed, 100, scene.image_id])
    noise = rng.normal(0.0, config.background_noise, size=(size, size, 3)) if config.background_noise else 0.0
    canvas = np.clip(BACKGROUND_LEVEL + noise, 0, 255).astype(np.uint8)
    boxes: list[list[float]] = []
    for obj in scene.objects:
        bitmap = glyphs[obj.category]
        x, y = glyph_origin(config, obj.cell, obj.offset)
        region = canvas[y : y + glyphs.size, x : x + glyphs.size]
        region[bitmap] = PALETTE[obj.color]
        rows = np.flatnonzero(bitmap.any(axis=1))
        cols = np.flatnonzero(bitmap.any(axis=0))
        boxes.append([float(x + cols[0]), float(y + rows[0]),
                      float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)])
    return canvas, boxes
