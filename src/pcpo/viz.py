"""Image grids (PIL): rows of images with an optional label per row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw


def to_pil(img: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] → RGB image."""
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def make_grid(images: torch.Tensor, nrow: int, labels: Sequence[str] | None = None, scale: int = 2,
              pad: int = 2, label_width: int = 110) -> Image.Image:
    """Grid with ``nrow`` images per row (row r labelled ``labels[r]``), each upscaled ``scale``× (nearest)."""
    n = images.shape[0]
    rows = (n + nrow - 1) // nrow
    h, w = images.shape[2] * scale, images.shape[3] * scale
    lw = label_width if labels else 0
    grid = Image.new("RGB", (lw + nrow * (w + pad) + pad, rows * (h + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(grid)
    for k in range(n):
        r, c = divmod(k, nrow)
        tile = to_pil(images[k]).resize((w, h), Image.NEAREST)
        grid.paste(tile, (lw + pad + c * (w + pad), pad + r * (h + pad)))
    if labels:
        for r in range(rows):
            if r < len(labels):
                draw.text((4, pad + r * (h + pad) + h // 2 - 5), str(labels[r])[:18], fill=(220, 220, 220))
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, labels: Sequence[str] | None = None,
              scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, nrow, labels, scale=scale).save(path)
    return path
