"""The world's prompt classifier: a ~63 K-parameter CNN over the 32 colour-shape prompts.

Why: it is the embedded stand-in for CLIP/ImageReward-style judges. It gives
* the ``alignment`` reward, ``log p(prompt | image)`` (:mod:`pcpo.rewards.world`),
* the gold metric *prompt accuracy* and the feature space (64-d, penultimate layer) for Fréchet distance
  and diversity (:mod:`pcpo.world.metrics`).

Trained on procedural world images (:mod:`pcpo.world.data`) with mild noise/blur augmentation so that it
also reads the slightly blurry samples of the toy models. Shipped as
``assets/classifier/prompt_classifier.safetensors`` (fp32, ~250 KB); rebuild with
``python -m pcpo.world.classifier`` (1500 Adam steps, batch 128, seed 0: 99.95 % accuracy on 2048 fresh
images; ~0.3-1 s per step on 2 CPU cores, so a few minutes idle; the shipped file took 30 min on a
heavily shared machine).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pcpo.world import data
from pcpo.world.errors import WeightsError

CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "assets" / "classifier"
CLASSIFIER_FILE = CLASSIFIER_DIR / "prompt_classifier.safetensors"
REBUILD = "python -m pcpo.world.classifier"
FEATURE_DIM = 64


class PromptClassifier(nn.Module):
    """Images in [0, 1] [B, 3, 32, 32] -> logits over :data:`pcpo.world.data.PROMPTS` [B, 32]."""

    def __init__(self, num_classes: int = len(data.PROMPTS)):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(3, 16, 3, padding=1),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.Conv2d(64, FEATURE_DIM, 3, stride=2, padding=1),
            ]
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [B, 64] (global mean of the last ReLU map)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
        h = images.float() * 2.0 - 1.0
        if h.shape[-1] != data.IMAGE_SIZE or h.shape[-2] != data.IMAGE_SIZE:
            h = F.interpolate(h, size=(data.IMAGE_SIZE, data.IMAGE_SIZE), mode="bilinear", antialias=True)
        for conv in self.convs:
            h = F.relu(conv(h))
        return h.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise and blur like imperfect generated samples (half the batch blurred, noise std U[0, 0.08])."""
    b = x.shape[0]
    k = torch.tensor([0.25, 0.5, 0.25])
    blurred = F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="replicate"), (k[:, None] * k[None, :]).expand(3, 1, 3, 3), groups=3
    )
    mask = (torch.rand(b, 1, 1, 1, generator=g) < 0.5).float()
    x = mask * blurred + (1 - mask) * x
    x = x + torch.randn(x.shape, generator=g) * torch.rand(b, 1, 1, 1, generator=g) * 0.08
    return x.clamp(0, 1)


@torch.no_grad()
def accuracy(model: PromptClassifier, n: int = 2048, seed: int = 999, batch: int = 512) -> float:
    """Accuracy on ``n`` fresh world images (seed not used in training), uniform over the 32 prompts."""
    model.eval()
    correct = 0
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, batch):
        ids = torch.arange(i, min(n, i + batch)) % len(data.PROMPTS)
        x = data.render(ids, g)
        correct += int((model(x).argmax(-1) == ids).sum())
    return correct / n


def train_classifier(
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    out: Path | None = CLASSIFIER_FILE,
) -> tuple[PromptClassifier, dict]:
    """Train the classifier from ``seed`` (Adam, cosine decay) and save it to ``out`` (safetensors)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = PromptClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    model.train()
    for _ in range(steps):
        ids = torch.randint(len(data.PROMPTS), (batch_size,), generator=g)
        x = _augment(data.render(ids, g), g)
        loss = F.cross_entropy(model(x), ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    record = dict(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        final_loss=float(loss.detach()),
        heldout_accuracy=accuracy(model),
        wall_time_s=round(time.time() - t0, 1),
        params=sum(p.numel() for p in model.parameters()),
        rebuild=REBUILD,
    )
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(out),
            metadata={"record": json.dumps(record)},
        )
    return model, record


def load_classifier_from(path: str | Path, device: str | torch.device = "cpu") -> PromptClassifier:
    """Load classifier weights from ``path``; :class:`WeightsError` (one line) if missing or corrupt."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"classifier weights {path} are missing; rebuild them with `{REBUILD}`")
    try:
        model = PromptClassifier()
        model.load_state_dict(load_file(str(path)))
    except Exception as e:  # corrupt header, truncated file, wrong keys or shapes
        raise WeightsError(
            f"classifier weights {path} are unreadable ({type(e).__name__}); rebuild them with `{REBUILD}`"
        ) from None
    return model.to(device).eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _cached(path: str, device: str) -> PromptClassifier:
    return load_classifier_from(path, device)


def load_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> PromptClassifier:
    """The shipped classifier (frozen, eval mode), cached per device."""
    return _cached(str(path or CLASSIFIER_FILE), str(torch.device(device)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pcpo.world.classifier", description="train the world classifier"
    )
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=CLASSIFIER_FILE)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    _, rec = train_classifier(steps=a.steps, seed=a.seed, out=a.out)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
