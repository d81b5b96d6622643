"""Pretrained-model rewards on tiny random models built from configs, and the one-line errors for missing
packages or weights (the HTTP reward server and client: tests/test_remote_reward.py)."""

from __future__ import annotations

import pytest
import torch

from pcpo.rewards.real import AestheticMLP, RewardLoadError, clip_preprocess
from pcpo.rewards.registry import available_rewards, build_reward

PROMPTS = ["a red cat", "a blue dog"]


def images(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def manual_clip_embeds(clip_dir: str, imgs: torch.Tensor, prompts):
    """Reference embeddings straight from transformers' CLIPModel.forward (not our code path)."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    ids = tok(list(prompts), padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                    pixel_values=clip_preprocess(imgs, 32))
    return out.image_embeds, out.text_embeds, model.logit_scale.exp().item(), out.logits_per_image


def test_clip_preprocess_matches_closed_form():
    x = images(1, 64)
    y = clip_preprocess(x, 32)
    assert y.shape == (1, 3, 32, 32)
    # a constant image stays constant and is normalised channel-wise
    c = torch.full((1, 3, 50, 70), 0.5)
    yc = clip_preprocess(c, 32)
    expect = (0.5 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(yc.mean(dim=(2, 3))[0], expect, atol=1e-5) and yc.std(dim=(2, 3)).max() < 1e-5
    # same size: only normalisation
    z = clip_preprocess(x[..., :32, :32], 32)
    assert torch.allclose(z[:, 0] * 0.26862954 + 0.48145466, x[:, 0, :32, :32], atol=1e-5)
    # a 2:1 image is resized on its short side and centre-cropped
    wide = torch.zeros(1, 3, 16, 32)
    wide[..., 8:24] = 1.0  # the centre half is white
    got, white = clip_preprocess(wide, 32), clip_preprocess(torch.ones(1, 3, 32, 32), 32)
    assert got.shape == (1, 3, 32, 32)
    assert torch.allclose(got[..., 2:-2], white[..., 2:-2], atol=0.05)  # bicubic blends only the border columns
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        clip_preprocess(torch.rand(3, 32, 32))


def test_pickscore_and_clip_score_on_tiny_clip(tiny_clip_dir):
    imgs = images()
    img_e, txt_e, logit_scale, logits = manual_clip_embeds(tiny_clip_dir, imgs, PROMPTS)
    cos = (img_e * txt_e).sum(-1)
    pick = build_reward("pickscore", model=tiny_clip_dir, processor=tiny_clip_dir, device="cpu")
    got = pick(imgs, PROMPTS)
    assert got.dtype == torch.float32 and got.shape == (2,)
    assert torch.allclose(got, logit_scale * cos, atol=1e-5)
    assert torch.allclose(got, logits.diagonal(), atol=1e-5)  # = CLIPModel's own logits_per_image diagonal
    clip = build_reward("clip_score", model=tiny_clip_dir, device="cpu", scale=2.0)
    assert torch.allclose(clip(imgs, PROMPTS), 2.0 * cos, atol=1e-6)
    # swapping prompts changes the score (text is used)
    assert (pick(imgs, PROMPTS[::-1]) - got).abs().max() > 1e-4
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        pick(imgs, PROMPTS[:1])


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_aesthetic_on_tiny_clip(tiny_clip_dir, tmp_path, fmt):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    head = AestheticMLP(16)
    path = tmp_path / f"head.{fmt}"
    if fmt == "safetensors":
        save_file(head.state_dict(), str(path))
    else:
        torch.save(head.state_dict(), str(path))
    reward = build_reward("aesthetic", head=str(path), model=tiny_clip_dir, device="cpu")
    imgs = images()
    img_e, _, _, _ = manual_clip_embeds(tiny_clip_dir, imgs, PROMPTS)
    with torch.no_grad():
        expect = head.eval()(img_e / img_e.norm(dim=-1, keepdim=True)).squeeze(-1)
    got = reward(imgs, PROMPTS)
    assert torch.allclose(got, expect, atol=1e-6) and got.shape == (2,)
    assert (got[0] - got[1]).abs() > 0  # depends on the image


def test_missing_weights_and_packages_fail_in_one_line(tiny_clip_dir, tmp_path):
    cases = [
        (dict(name="aesthetic"), "reward aesthetic: no head weights given"),
        (dict(name="aesthetic", head=str(tmp_path / "nope.pth"), model=tiny_clip_dir), "weights not found"),
        (dict(name="pickscore", model=str(tmp_path / "no-model")), "cannot load CLIP model"),
        (dict(name="clip_score", model="openai/clip-vit-large-patch14-not-downloaded"), "cannot load CLIP model"),
        (dict(name="hpsv2"), "reward hpsv2"),
        (dict(name="image_reward"), "reward image_reward"),
    ]
    for kw, msg in cases:
        name = kw.pop("name")
        with pytest.raises(RewardLoadError) as e:
            build_reward(name, device="cpu", **kw)
        text = str(e.value)
        assert msg in text and "\n" not in text, text
        if name in ("hpsv2", "image_reward"):
            assert "pip install" in text


def test_rewards_registered():
    names = set(available_rewards())
    assert {"aesthetic", "pickscore", "clip_score", "hpsv2", "image_reward", "remote"} <= names
