"""The embedded text-to-image world: procedural 32x32 images of one coloured shape on a dark background.

Why: RL for text-to-image needs a world where a model can be pretrained on two CPU cores in minutes and
where "does the image match the prompt" is decidable (a classifier at >= 98 % accuracy, colour masks).

* 8 colours x 4 shapes = 32 prompts, ``"a red circle"``, ``"an orange cross"``, ... (:data:`PROMPTS`, fixed order = class ids).
* Images: dark grey background (level U[0, 0.12]), one anti-aliased shape of random size (radius
  6-12 px) and position (fully inside the frame), colour = the named RGB with +-0.04 jitter per channel.
* Held-out prompts (:data:`HELDOUT_PROMPTS`): 8 prompts (one per colour, each shape twice) that evaluation
  uses. The toy models are trained on *all* 32 prompts (they must draw every prompt), so "held-out" means
  prompts the RL runs do not train on, a fixed subset for evaluation of generalisation across prompts.
* Pixel ranges: :func:`sample_images` returns [0, 1] (what rewards see); :func:`to_model` maps to [-1, 1]
  (what the toy models are trained on); :func:`from_model` maps back.

Everything is batched torch and deterministic given a ``torch.Generator`` (CPU) or an integer seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

IMAGE_SIZE = 32

#: colour name -> RGB in [0, 1]; well separated so colour masks and the classifier are unambiguous.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.15, 0.85),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)


#: all 32 prompts; index = class id = 4 * colour index + shape index.
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


PROMPTS: tuple[str, ...] = tuple(f"{_article(c)} {c} {s}" for c in COLOR_NAMES for s in SHAPES)
PROMPT_TO_ID: dict[str, int] = {p: i for i, p in enumerate(PROMPTS)}

#: fixed evaluation subset: one prompt per colour, shapes rotated so each shape appears twice.
HELDOUT_PROMPTS: tuple[str, ...] = tuple(
    f"{_article(c)} {c} {SHAPES[(i + 1) % len(SHAPES)]}" for i, c in enumerate(COLOR_NAMES)
)
TRAIN_PROMPTS: tuple[str, ...] = tuple(p for p in PROMPTS if p not in HELDOUT_PROMPTS)

REFERENCE_SEED = 1234
REFERENCE_SIZE = 1024  # 32 per prompt


def prompt_id(prompt: str) -> int:
    """Class id of a world prompt (``ValueError`` naming the prompt if it is not one of the 32)."""
    try:
        return PROMPT_TO_ID[prompt.strip().lower()]
    except KeyError:
        raise ValueError(
            f"prompt {prompt!r} is not a world prompt; use one of pcpo.world.data.PROMPTS"
        ) from None


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``(colour, shape)`` of a world prompt."""
    i = prompt_id(prompt)
    return COLOR_NAMES[i // len(SHAPES)], SHAPES[i % len(SHAPES)]


def prompt_colors(prompts: Sequence[str]) -> torch.Tensor:
    """RGB [B, 3] in [0, 1] of each prompt's colour."""
    return torch.tensor([COLORS[parse_prompt(p)[0]] for p in prompts], dtype=torch.float32)


def _generator(seed_or_gen: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed_or_gen, torch.Generator):
        return seed_or_gen
    g = torch.Generator()
    g.manual_seed(0 if seed_or_gen is None else int(seed_or_gen))
    return g


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def render(
    class_ids: torch.Tensor, generator: int | torch.Generator | None = None, size: int = IMAGE_SIZE
) -> torch.Tensor:
    """Render one random instance of each class id; returns float32 [B, 3, size, size] in [0, 1]."""
    g = _generator(generator)
    ids = torch.as_tensor(class_ids, dtype=torch.long).flatten()
    b = ids.numel()
    scale = size / IMAGE_SIZE
    r = _u(g, b, 6.0, 12.0) * scale  # "radius" (half extent) in pixels
    margin = r + 1.0
    cx = margin + torch.rand(b, generator=g) * (size - 2 * margin)
    cy = margin + torch.rand(b, generator=g) * (size - 2 * margin)
    bg = _u(g, b, 0.0, 0.12)
    jitter = (torch.rand(b, 3, generator=g) - 0.5) * 0.08
    color_idx, shape_idx = ids // len(SHAPES), ids % len(SHAPES)
    base = torch.tensor(list(COLORS.values()), dtype=torch.float32)[color_idx]
    col = (base + jitter).clamp(0.0, 1.0)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, size) - cx.view(b, 1, 1)
    dy = coords.view(1, size, 1) - cy.view(b, 1, 1)
    rr = r.view(b, 1, 1)
    adx, ady = dx.abs(), dy.abs()
    # signed distances (pixels; < 0 inside) of each shape, all computed and then selected per row
    sd_circle = torch.sqrt(dx**2 + dy**2) - rr
    sd_square = torch.maximum(adx, ady) - 0.82 * rr  # same area as the circle, roughly
    # upward triangle inscribed in the circle of radius r: apex (0, -r), base at y = r/2
    n = math.sqrt(3.0) / 2.0
    sd_tri = torch.maximum(
        dy - 0.5 * rr, torch.maximum(n * dx - 0.5 * dy - 0.5 * rr, -n * dx - 0.5 * dy - 0.5 * rr)
    )
    w = 0.34 * rr
    sd_cross = torch.minimum(torch.maximum(adx - w, ady - rr), torch.maximum(ady - w, adx - rr))
    sd = torch.stack([sd_circle, sd_square, sd_tri, sd_cross], dim=1)  # [B, 4, H, W]
    sd = sd.gather(1, shape_idx.view(b, 1, 1, 1).expand(b, 1, size, size))
    alpha = (0.5 - sd).clamp(0.0, 1.0)  # 1-pixel anti-aliased edge
    img = bg.view(b, 1, 1, 1) * (1 - alpha) + col.view(b, 3, 1, 1) * alpha
    return img.clamp(0.0, 1.0)


def sample_images(
    batch_size: int,
    generator: int | torch.Generator | None = None,
    prompts: Sequence[str] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """A batch of world images in [0, 1] and their prompts (uniform over the 32 unless ``prompts``)."""
    g = _generator(generator)
    if prompts is None:
        ids = torch.randint(len(PROMPTS), (batch_size,), generator=g)
    else:
        if len(prompts) != batch_size:
            raise ValueError(f"prompts: got {len(prompts)} prompts for batch_size {batch_size}")
        ids = torch.tensor([prompt_id(p) for p in prompts])
    return render(ids, g), [PROMPTS[i] for i in ids.tolist()]


def to_model(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (the toy models' pixel space)."""
    return images01 * 2.0 - 1.0


def from_model(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def reference_set(
    n_per_prompt: int = REFERENCE_SIZE // len(PROMPTS),
    prompts: Sequence[str] = PROMPTS,
    seed: int = REFERENCE_SEED,
) -> tuple[torch.Tensor, list[str]]:
    """The fixed reference set of real images for Fréchet distance (default 32 per prompt, 1024 images).

    Deterministic (``seed``), regenerated on demand in a few ms instead of being shipped.
    """
    ps = [p for p in prompts for _ in range(n_per_prompt)]
    return sample_images(len(ps), seed, ps)
