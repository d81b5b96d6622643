"""World rewards on constructed images with known answers."""

from __future__ import annotations

import torch

from pcpo.rewards.registry import WeightedSum, available_rewards, build_reward
from pcpo.world import data


def _solid(rgb, n=1, size=32):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, size, size).clone()


def test_registered():
    names = set(available_rewards())
    assert {
        "color_match",
        "jpeg_compressibility",
        "jpeg_incompressibility",
        "brightness",
        "colorfulness",
        "alignment",
    } <= names


def test_color_match_values():
    r = build_reward("color_match")
    red = _solid(data.COLORS["red"], 2)
    v = r(red, ["a red square", "a blue square"])
    assert v.dtype == torch.float32 and v.shape == (2,)
    assert v[0] == 1.0 and v[1] == 0.0
    # half red, half black -> 0.5
    img = torch.zeros(1, 3, 32, 32)
    img[:, :, :16] = torch.tensor(data.COLORS["red"]).view(1, 3, 1, 1)
    assert abs(float(r(img, ["a red circle"])[0]) - 0.5) < 1e-6
    # real world image: fraction within the shape's area range
    x, p = data.sample_images(16, 0)
    v = r(x, p)
    assert ((v > 0.02) & (v < 0.5)).all()


def test_jpeg_brightness_colorfulness():
    flat = _solid((0.5, 0.5, 0.5))
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, 32, 32, generator=g)
    comp, incomp = build_reward("jpeg_compressibility"), build_reward("jpeg_incompressibility")
    kb_flat, kb_noise = float(incomp(flat, ["x"])[0]), float(incomp(noise, ["x"])[0])
    assert 0.3 < kb_flat < 1.0 and kb_noise > 2.5 * kb_flat
    assert float(comp(noise, ["x"])[0]) == -kb_noise
    b = build_reward("brightness")
    assert torch.allclose(
        b(torch.cat([flat, _solid((1, 1, 1)), _solid((0, 0, 0))]), ["x"] * 3),
        torch.tensor([0.5, 1.0, 0.0]),
        atol=1e-6,
    )
    c = build_reward("colorfulness")
    # grey -> 0; solid red (255, 0, 0): std 0, mean sqrt(255^2 + 127.5^2) -> 0.3 * 285.1
    v = c(torch.cat([flat, _solid((1, 0, 0))]), ["x", "x"])
    assert abs(float(v[0])) < 1e-4 and abs(float(v[1]) - 0.3 * (255**2 + 127.5**2) ** 0.5) < 1e-2


def test_alignment_and_weighted_sum():
    x, p = data.sample_images(32, 5)
    a = build_reward("alignment")
    right = a(x, p)
    wrong = a(x, [data.PROMPTS[(data.prompt_id(q) + 1) % 32] for q in p])
    assert (right <= 0).all() and right.mean() > -0.1 and wrong.mean() < -3.0
    ws = WeightedSum({"color_match": (1.0, build_reward("color_match")), "alignment": (0.1, a)})
    total = ws(x, p)
    assert torch.allclose(total, build_reward("color_match")(x, p) + 0.1 * right, atol=1e-6)
