"""Rewards of the embedded world: weightless image statistics and the prompt classifier's log-probability.

All take ``images`` float [B, 3, H, W] in [0, 1] and ``prompts`` (list of B strings) and return float32 [B]
(on the images' device). Registered in :mod:`pcpo.rewards.registry`:

==========================  =================================================================  =========
name                        value                                                              needs
==========================  =================================================================  =========
``color_match``             fraction of pixels within ``threshold`` (RGB distance in [0, 1]     world
                            units, default 0.25) of the prompt's colour                          prompts
``jpeg_compressibility``    ``-`` size of the PIL JPEG (q=95) in kB (DDPO's compressibility)      -
``jpeg_incompressibility``  ``+`` size in kB                                                      -
``brightness``              mean luma (Rec. 601) in [0, 1]                                        -
``colorfulness``            Hasler & Süsstrunk (2003) M = σ_rgyb + 0.3 μ_rgyb, on 0-255 values    -
``alignment``               ``log p(prompt | image)`` under the shipped world classifier (<= 0)   world
                                                                                                  prompts
``color_match_metadata``    ``color_match`` against the colour named by each prompt's metadata    metadata
                            field ``field`` (default ``color``; GenEval-style: the attribute      ``color``
                            comes from the prompt file, not from parsing the prompt)
==========================  =================================================================  =========

Weighted sums: ``WeightedSum({"color_match": (1.0, build_reward("color_match")), ...})``, or in a config
``reward: {sum: {color_match: 1.0, alignment: 0.1}}``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch

from pcpo.errors import PcpoError
from pcpo.rewards.registry import RewardFn, register_reward
from pcpo.world import data


def _check(images: torch.Tensor, prompts: Sequence[str] | None = None) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected [B, 3, H, W] floats in [0, 1], got shape {tuple(images.shape)}")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise ValueError(f"prompts: got {len(prompts)} prompts for {images.shape[0]} images")


def color_match_score(images: torch.Tensor, prompts: Sequence[str], threshold: float = 0.25) -> torch.Tensor:
    """Fraction of pixels whose RGB distance to the prompt's colour is below ``threshold``."""
    _check(images, prompts)
    return color_fraction(images, data.prompt_colors(prompts), threshold)


def color_fraction(images: torch.Tensor, colors: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Fraction of each image's pixels within RGB distance ``threshold`` of its colour (``colors`` [B, 3])."""
    col = colors.to(images.device).view(-1, 3, 1, 1)
    dist = (images.float() - col).pow(2).sum(1).sqrt()
    return (dist < threshold).float().mean(dim=(1, 2)).float()


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Size in kB (1000 bytes) of each image saved as JPEG with PIL at ``quality``."""
    from PIL import Image

    _check(images)
    arr = (
        (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    sizes = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


def brightness_score(images: torch.Tensor) -> torch.Tensor:
    """Mean Rec. 601 luma in [0, 1]."""
    _check(images)
    w = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    return (images.float() * w).sum(1).mean(dim=(1, 2))


def colorfulness_score(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk colourfulness on 0-255 values (grey = 0, saturated primaries ~100+)."""
    _check(images)
    x = images.float() * 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    std = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False))
    mean = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return std + 0.3 * mean


@register_reward("color_match")
def color_match(threshold: float = 0.25) -> RewardFn:
    return lambda images, prompts: color_match_score(images, prompts, threshold)


class MetadataColorMatch:
    """:func:`color_match_score` with each image's target colour read from its prompt's metadata
    (``metadata[i][field]``, a world colour name): a reward that needs per-prompt metadata."""

    def __init__(self, field: str = "color", threshold: float = 0.25):
        self.field = field
        self.threshold = threshold

    def colors(self, metadata: Sequence[dict] | None, n: int) -> torch.Tensor:
        if metadata is None:
            raise PcpoError(f"reward color_match_metadata: needs per-prompt metadata with a {self.field!r} field; "
                            f"give the prompts as a .jsonl/.json/.csv/.tsv file with that field")
        if len(metadata) != n:
            raise ValueError(f"metadata: got {len(metadata)} entries for {n} images")
        rgb = []
        for i, m in enumerate(metadata):
            name = m.get(self.field) if isinstance(m, dict) else None
            if name not in data.COLORS:
                raise PcpoError(f"reward color_match_metadata: metadata {self.field!r} of image {i} is {name!r}; "
                                f"use one of {', '.join(data.COLOR_NAMES)}")
            rgb.append(data.COLORS[name])
        return torch.tensor(rgb, dtype=torch.float32)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], *,
                 metadata: Sequence[dict] | None = None) -> torch.Tensor:
        _check(images, prompts)
        return color_fraction(images, self.colors(metadata, images.shape[0]), self.threshold)


@register_reward("color_match_metadata")
def color_match_metadata(field: str = "color", threshold: float = 0.25) -> RewardFn:
    return MetadataColorMatch(field, threshold)


@register_reward("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95) -> RewardFn:
    return lambda images, prompts: -jpeg_size_kb(images, quality)


@register_reward("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = 95) -> RewardFn:
    return lambda images, prompts: jpeg_size_kb(images, quality)


@register_reward("brightness")
def brightness() -> RewardFn:
    return lambda images, prompts: brightness_score(images)


@register_reward("colorfulness")
def colorfulness() -> RewardFn:
    return lambda images, prompts: colorfulness_score(images)


class AlignmentReward:
    """``log p(prompt | image)`` under the world classifier (lazy-loaded on the images' device)."""

    def __init__(self, path: str | None = None):
        self.path = path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        from pcpo.world.classifier import load_classifier

        _check(images, prompts)
        clf = load_classifier(images.device, self.path)
        ids = torch.tensor([data.prompt_id(p) for p in prompts], device=images.device)
        logp = torch.log_softmax(clf(images.float()), dim=-1)
        return logp.gather(1, ids[:, None]).squeeze(1).float()


@register_reward("alignment")
def alignment(path: str | None = None) -> RewardFn:
    return AlignmentReward(path)


__all__ = [
    "AlignmentReward",
    "brightness_score",
    "color_match_score",
    "colorfulness_score",
    "jpeg_size_kb",
]
