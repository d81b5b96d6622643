"""The procedural world and its tokenizer: prompts, rendering, determinism, ranges."""

from __future__ import annotations

import time

import pytest
import torch

from pcpo.world import data


def test_prompts_and_heldout_split():
    assert len(data.PROMPTS) == 32 and len(set(data.PROMPTS)) == 32
    assert len(data.COLORS) >= 8 and set(data.SHAPES) >= {"circle", "square", "triangle", "cross"}
    assert "a red circle" in data.PROMPTS and "an orange cross" in data.PROMPTS
    assert len(data.HELDOUT_PROMPTS) == 8 and set(data.HELDOUT_PROMPTS) <= set(data.PROMPTS)
    assert set(data.TRAIN_PROMPTS) | set(data.HELDOUT_PROMPTS) == set(data.PROMPTS)
    assert not set(data.TRAIN_PROMPTS) & set(data.HELDOUT_PROMPTS)
    # one held-out prompt per colour, every shape twice
    assert sorted(data.parse_prompt(p)[0] for p in data.HELDOUT_PROMPTS) == sorted(data.COLOR_NAMES)
    shapes = [data.parse_prompt(p)[1] for p in data.HELDOUT_PROMPTS]
    assert all(shapes.count(s) == 2 for s in data.SHAPES)
    assert data.parse_prompt("A Blue Triangle") == ("blue", "triangle")
    with pytest.raises(ValueError, match="not a world prompt"):
        data.prompt_id("a purple dog")


def test_render_deterministic_batched_and_in_range():
    x1, p1 = data.sample_images(64, 7)
    x2, p2 = data.sample_images(64, 7)
    x3, _ = data.sample_images(64, 8)
    assert x1.shape == (64, 3, 32, 32) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and p1 == p2 and not torch.equal(x1, x3)
    assert x1.min() >= 0 and x1.max() <= 1
    m = data.to_model(x1)
    assert m.min() >= -1 and m.max() <= 1 and torch.allclose(data.from_model(m), x1, atol=1e-6)
    t0 = time.perf_counter()
    data.sample_images(64, 9)
    assert time.perf_counter() - t0 < 0.5  # ~2-4 ms on 2 cores


def test_shape_colour_and_background():
    prompts = ["a red circle", "a blue square", "a green triangle", "a white cross"]
    x, _ = data.sample_images(4, 0, prompts)
    cols = data.prompt_colors(prompts)
    for i in range(4):
        img = x[i]
        dist = (img - cols[i].view(3, 1, 1)).norm(dim=0)
        frac = (dist < 0.15).float().mean()
        assert 0.04 < frac < 0.6, (prompts[i], frac)  # a shape of radius 6-12 px on 32x32
        corners = img[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.max() <= 0.13  # dark background (shapes stay inside the frame)


def test_shapes_have_distinct_areas_for_same_size():
    # same generator state -> same size/position; circle vs square vs triangle vs cross masks differ
    ids = torch.tensor([0, 1, 2, 3])  # red circle/square/triangle/cross
    masks = []
    for i in ids:
        g = torch.Generator().manual_seed(3)
        img = data.render(i.view(1), g)[0]
        masks.append((img[0] > 0.5) & (img[1] < 0.4))
    areas = [int(m.sum()) for m in masks]
    assert len(set(areas)) == 4
    assert areas[2] < areas[0] and areas[3] < areas[1]  # triangle < circle, cross < square


def test_reference_set_fixed():
    a, pa = data.reference_set()
    b, pb = data.reference_set()
    assert a.shape == (1024, 3, 32, 32) and torch.equal(a, b) and pa == pb
    assert all(pa.count(p) == 32 for p in data.PROMPTS)


def test_tokenizer_offline_small_clip_bpe():
    from pcpo.world.tokenizer import MAX_LENGTH, load_tokenizer, tokenize

    tok = load_tokenizer()
    assert len(tok) == 2514
    ids = tokenize(["a red circle", ""])
    assert ids.shape == (2, MAX_LENGTH)
    # CLIP's ids for 'a</w>' (320) and 'red</w>' (736) are within the first 2000 merges
    assert ids[0, :3].tolist() == [2512, 320, 736] and ids[1, :2].tolist() == [2512, 2513]
    assert (ids[1, 1:] == 2513).all()
    # every world prompt fits without truncation: ends with EOS and distinct prompts give distinct ids
    all_ids = tokenize(list(data.PROMPTS))
    assert all(2513 in row.tolist() for row in all_ids)
    assert len({tuple(r.tolist()) for r in all_ids}) == 32
