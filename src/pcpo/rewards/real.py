"""Rewards built on pretrained image–text models: LAION aesthetic, PickScore, CLIP score, HPSv2.1, ImageReward.

Every factory loads its model when it is called (``build_reward(name, ...)``), never at import, from a hub
id or a local directory (``HF_HUB_OFFLINE=1`` works with downloaded or local weights). Each returns a
callable ``reward(images [B,3,H,W] in [0,1], prompts) -> Tensor[B] float32`` that runs without gradients.
Images are preprocessed in torch (no torchvision, no PIL round trip): shortest side resized to the model's
input size (bicubic, antialiased), centre crop, CLIP normalisation. A missing package or missing weights
raise a one-line error that says what to install or where to put the weights.

Scores (raw unless ``scale`` says otherwise):
* ``aesthetic``: LAION improved-aesthetic-predictor MLP on the L2-normalised CLIP ViT-L/14 image embedding
  (DDPO's reward; ~1–10).
* ``pickscore``: ``logit_scale · cos(text, image)`` of PickScore_v1 (~20–23; Flow-GRPO uses ``scale: 1/26``).
* ``clip_score``: ``cos(text, image)`` of a CLIP model.
* ``hpsv2``: HPSv2.1, ``cos(text, image)`` of the HPS-fine-tuned OpenCLIP ViT-H/14 (``pip install hpsv2``).
* ``image_reward``: ImageReward-v1.0 (``pip install image-reward``), normalised as the package does.

JPEG (in)compressibility is registered by :mod:`pcpo.rewards.world` (weightless rewards live there).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import remote as _remote  # noqa: F401  (registers "remote")
from .registry import register_reward

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardLoadError(RuntimeError):
    """A reward's package or weights are missing (the message is one line saying what to do)."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:limit]


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    from pcpo.models.diffusers_base import parse_dtype

    return parse_dtype(dtype, "reward.dtype") or torch.float32


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """[B,3,H,W] in [0,1] → CLIP input: resize the shortest side to ``size`` (bicubic, antialias), centre
    crop ``size × size``, clamp to [0, 1], normalise. Matches ``CLIPImageProcessor`` up to resampling."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"reward: images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    x = images.float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    x = x.clamp(0, 1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------------------------------------
# transformers CLIP backbone (aesthetic, PickScore, CLIP score)


class ClipBackbone:
    """A transformers ``CLIPModel`` + tokenizer with torch preprocessing and a per-prompt text cache."""

    def __init__(self, model: str, processor: str | None = None, device=None, dtype=None, reward: str = "clip"):
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as e:  # pragma: no cover - transformers is a core dependency
            raise RewardLoadError(f"reward {reward}: pip install transformers ({_one_line(e)})") from None
        self.device, self.dtype = _device(device), _dtype(dtype)
        try:
            from pcpo.models.diffusers_base import transformers_dtype_kwarg

            kw = {transformers_dtype_kwarg(): self.dtype}
            self.model = CLIPModel.from_pretrained(model, **kw).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise RewardLoadError(
                f"reward {reward}: cannot load CLIP model {model!r} ({_one_line(e)}); download it "
                f"(`hf download {model}`) or pass model=LOCAL_DIR"
            ) from None
        self.model.requires_grad_(False)
        proc = processor or model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(proc)
        except (OSError, ValueError, TypeError) as e:
            raise RewardLoadError(
                f"reward {reward}: cannot load the tokenizer of {proc!r} ({_one_line(e)}); download it or pass "
                f"processor=LOCAL_DIR"
            ) from None
        self.size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        self._read_image_processor(proc)
        self.max_length = min(int(self.model.config.text_config.max_position_embeddings),
                              int(getattr(self.tokenizer, "model_max_length", 77) or 77))
        self._text_cache: dict[str, torch.Tensor] = {}

    def _read_image_processor(self, path: str) -> None:
        """Take mean/std/size from ``preprocessor_config.json`` when the processor has one."""
        import json

        cfg_path = None
        if os.path.isdir(path):
            cfg_path = os.path.join(path, "preprocessor_config.json")
        else:
            try:
                from huggingface_hub import hf_hub_download

                cfg_path = hf_hub_download(path, "preprocessor_config.json")
            except Exception:  # noqa: BLE001 - optional file; defaults are CLIP's
                cfg_path = None
        if cfg_path and os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
            self.mean = tuple(cfg.get("image_mean", self.mean))
            self.std = tuple(cfg.get("image_std", self.std))
            crop = cfg.get("crop_size", self.size)
            self.size = int(crop.get("height", self.size) if isinstance(crop, dict) else crop)

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image embeddings, float32 [B, D]."""
        x = clip_preprocess(images.to(self.device), self.size, self.mean, self.std).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        emb = self.model.visual_projection(pooled).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings, float32 [B, D] (cached per prompt)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            tok = self.tokenizer(list(new), padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            pooled = self.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
            emb = self.model.text_projection(pooled).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            for p, e in zip(new, emb):
                self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def _check_batch(images: torch.Tensor, prompts: Sequence[str], reward: str) -> None:
    if len(prompts) != images.shape[0]:
        raise ValueError(f"reward {reward}: got {images.shape[0]} images but {len(prompts)} prompts")


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head (``sac+logos+ava1-l14-linearMSE.pth`` layout)."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        return self.layers(embed)


def _resolve_file(path: str, reward: str, hint: str) -> str:
    """A local file, or ``hf://owner/repo/file`` fetched with ``hf_hub_download`` (cache / offline aware)."""
    if path.startswith("hf://"):
        parts = path[5:].split("/")
        if len(parts) < 3:
            raise ValueError(f"reward {reward}: hf:// paths look like hf://owner/repo/filename, got {path!r}")
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
        except Exception as e:  # noqa: BLE001 - network/offline/missing file all mean the same here
            raise RewardLoadError(f"reward {reward}: cannot fetch {path} ({_one_line(e)}); {hint}") from None
    if not os.path.isfile(path):
        raise RewardLoadError(f"reward {reward}: weights not found at {path!r}; {hint}")
    return path


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """safetensors, or a torch pickle read with ``weights_only=True``."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


AESTHETIC_HINT = ("download sac+logos+ava1-l14-linearMSE.pth from github.com/christophschuhmann/"
                  "improved-aesthetic-predictor (also in kvablack/ddpo-pytorch assets) and pass head=PATH")


@register_reward("aesthetic")
def aesthetic_reward(head: str | None = None, model: str = "openai/clip-vit-large-patch14",
                     processor: str | None = None, device=None, dtype=None, scale: float = 1.0):
    """LAION aesthetic score: MLP head on the normalised CLIP image embedding (DDPO's ``aesthetic_score``)."""
    if not head:
        raise RewardLoadError(f"reward aesthetic: no head weights given; {AESTHETIC_HINT}")
    head_path = _resolve_file(head, "aesthetic", AESTHETIC_HINT)
    clip = ClipBackbone(model, processor, device, dtype, reward="aesthetic")
    mlp = AestheticMLP(int(clip.model.config.projection_dim))
    try:
        mlp.load_state_dict(load_state_dict_file(head_path))
    except (RuntimeError, KeyError) as e:
        raise RewardLoadError(f"reward aesthetic: {head_path} is not an aesthetic head for this CLIP ({_one_line(e)})") from None
    mlp = mlp.to(clip.device).eval().requires_grad_(False)

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts, "aesthetic")
        return (scale * mlp(clip.image_embeds(images)).squeeze(-1)).float().to(images.device)

    reward.backbone, reward.head = clip, mlp  # type: ignore[attr-defined]
    return reward


@register_reward("pickscore")
def pickscore_reward(model: str = "yuvalkirstain/PickScore_v1",
                     processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", device=None, dtype=None,
                     scale: float = 1.0):
    """PickScore: ``logit_scale · cos(text, image)`` (× ``scale``; Flow-GRPO uses 1/26)."""
    clip = ClipBackbone(model, processor, device, dtype, reward="pickscore")

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts, "pickscore")
        cos = (clip.image_embeds(images) * clip.text_embeds(list(prompts))).sum(-1)
        return (scale * clip.logit_scale * cos).float().to(images.device)

    reward.backbone = clip  # type: ignore[attr-defined]
    return reward


@register_reward("clip_score")
def clip_score_reward(model: str = "openai/clip-vit-large-patch14", processor: str | None = None, device=None,
                      dtype=None, scale: float = 1.0):
    """CLIP score: ``cos(text, image)`` (× ``scale``; torchmetrics' CLIPScore is 100·max(cos, 0))."""
    clip = ClipBackbone(model, processor, device, dtype, reward="clip_score")

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts, "clip_score")
        return (scale * (clip.image_embeds(images) * clip.text_embeds(list(prompts))).sum(-1)).float().to(images.device)

    reward.backbone = clip  # type: ignore[attr-defined]
    return reward


# ---------------------------------------------------------------------------------------------------------
# Optional packages: HPSv2.1 and ImageReward


HPS_HINT = "download HPS_v2.1_compressed.pt from the hub repo xswu/HPSv2 and pass checkpoint=PATH (or hf://xswu/HPSv2/HPS_v2.1_compressed.pt)"


@register_reward("hpsv2")
def hpsv2_reward(checkpoint: str = "hf://xswu/HPSv2/HPS_v2.1_compressed.pt", device=None, dtype=None,
                 scale: float = 1.0):
    """HPSv2.1 (DanceGRPO's reward): ``cos(text, image)`` of the HPS OpenCLIP ViT-H/14.

    Needs ``pip install hpsv2`` (which needs open_clip_torch and torchvision) and the checkpoint file.
    """
    try:
        from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision's operator errors on import
        raise RewardLoadError(
            f"reward hpsv2: the hpsv2 package is not usable ({_one_line(e, 120)}); pip install 'pcpo[hps]' "
            f"(hpsv2, open_clip_torch, torchvision)"
        ) from None
    path = _resolve_file(checkpoint, "hpsv2", HPS_HINT)
    dev, dt = _device(device), _dtype(dtype)
    model, _, _ = create_model_and_transforms("ViT-H-14", None, precision="fp32", device="cpu", jit=False,
                                              force_quick_gelu=False, pretrained_image=False)
    try:
        model.load_state_dict(load_state_dict_file(path))
    except (RuntimeError, KeyError) as e:
        raise RewardLoadError(f"reward hpsv2: {path} is not an HPSv2 checkpoint ({_one_line(e)})") from None
    model = model.to(dev, dt).eval().requires_grad_(False)
    tokenizer = get_tokenizer("ViT-H-14")

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts, "hpsv2")
        x = clip_preprocess(images.to(dev), 224).to(dt)
        text = tokenizer(list(prompts)).to(dev)
        out = model(x, text)
        img, txt = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        img, txt = img.float(), txt.float()
        return (scale * (img * txt).sum(-1)).float().to(images.device)

    return reward


IMAGE_REWARD_HINT = "pip install 'pcpo[imagereward]' (image-reward); weights: ImageReward-v1.0 from the hub repo THUDM/ImageReward"


@register_reward("image_reward")
def image_reward_reward(model: str = "ImageReward-v1.0", download_root: str | None = None, device=None,
                        scale: float = 1.0):
    """ImageReward-v1.0 (BLIP + MLP), normalised as the package does (``(r − mean)/std``)."""
    try:
        import ImageReward as RM  # noqa: N813
    except Exception as e:  # noqa: BLE001
        raise RewardLoadError(f"reward image_reward: the ImageReward package is not usable ({_one_line(e, 120)}); "
                              f"{IMAGE_REWARD_HINT}") from None
    dev = _device(device)
    try:
        net = RM.load(model, device=str(dev), download_root=download_root)
    except Exception as e:  # noqa: BLE001 - download/offline/missing file
        raise RewardLoadError(f"reward image_reward: cannot load {model!r} ({_one_line(e)}); {IMAGE_REWARD_HINT}") from None
    net.eval().requires_grad_(False)

    @torch.no_grad()
    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts, "image_reward")
        x = clip_preprocess(images.to(dev), 224)
        tok = net.blip.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35,
                                 return_tensors="pt").to(dev)
        scores = net.score_gard(tok.input_ids, tok.attention_mask, x)
        return (scale * scores.reshape(-1)).float().to(images.device)

    return reward
