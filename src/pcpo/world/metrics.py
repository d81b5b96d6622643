"""Gold metrics of the embedded world, in the world classifier's feature space.

Why "gold": RL optimises a proxy reward (colour area, JPEG size, classifier log-prob); these metrics
check what the proxy may hide: whether images still show the prompt (prompt accuracy), whether the
sample distribution drifted from real images or from the base model (Fréchet distance), and whether
samples for one prompt collapsed to one image (per-prompt diversity).

Pure functions on tensors + :class:`GoldMetrics`, which caches the real reference set's features.
Features: the classifier's penultimate layer (64-d), see :mod:`pcpo.world.classifier`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from pcpo.world import data


def _classifier(classifier=None, device: torch.device | str = "cpu"):
    if classifier is not None:
        return classifier
    from pcpo.world.classifier import load_classifier

    return load_classifier(device)


@torch.no_grad()
def classifier_logits(images: torch.Tensor, classifier=None, batch_size: int = 512) -> torch.Tensor:
    """Classifier logits [N, 32] for images in [0, 1] (batched, no grad)."""
    clf = _classifier(classifier, images.device)
    return torch.cat([clf(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def classifier_features(images: torch.Tensor, classifier=None, batch_size: int = 512) -> torch.Tensor:
    """Penultimate-layer features [N, 64] for images in [0, 1] (batched, no grad)."""
    clf = _classifier(classifier, images.device)
    return torch.cat(
        [clf.features(images[i : i + batch_size].float()) for i in range(0, len(images), batch_size)]
    )


def prompt_accuracy(images: torch.Tensor, prompts: Sequence[str], classifier=None) -> dict[str, float]:
    """Fraction of images classified as their prompt; also colour-only and shape-only accuracy."""
    if len(prompts) != len(images):
        raise ValueError(f"prompts: got {len(prompts)} prompts for {len(images)} images")
    ids = torch.tensor([data.prompt_id(p) for p in prompts], device=images.device)
    pred = classifier_logits(images, classifier).argmax(-1)
    n_shapes = len(data.SHAPES)
    return {
        "prompt_accuracy": float((pred == ids).float().mean()),
        "color_accuracy": float((pred // n_shapes == ids // n_shapes).float().mean()),
        "shape_accuracy": float((pred % n_shapes == ids % n_shapes).float().mean()),
    }


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½`` (float64).

    The trace term goes through symmetric eigendecompositions (no ``scipy.linalg.sqrtm``), so it stays real
    and finite for the rank-deficient covariances of small sets (fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"frechet: mismatched shapes {mu1.shape}/{mu2.shape}, {s1.shape}/{s2.shape}")
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
    return max(fd, 0.0)


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) covariance of features [N, D] as float64 numpy."""
    f = (
        features.detach().cpu().double().numpy()
        if isinstance(features, torch.Tensor)
        else np.asarray(features, np.float64)
    )
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: need [N >= 2, D], got shape {f.shape}")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / f.shape[0]


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
    return gaussian_frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


def per_prompt_diversity(features: torch.Tensor, prompts: Sequence[str]) -> float:
    """Mean pairwise Euclidean feature distance within each prompt's samples, averaged over prompts.

    Prompts with a single sample are skipped; returns NaN if no prompt has two samples.
    """
    if len(prompts) != len(features):
        raise ValueError(f"prompts: got {len(prompts)} prompts for {len(features)} feature rows")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    vals = [float(torch.pdist(features[idx].double()).mean()) for idx in groups.values() if len(idx) >= 2]
    return float(np.mean(vals)) if vals else float("nan")


class GoldMetrics:
    """Prompt accuracy, Fréchet distance (to real images, optionally to base-model samples) and diversity.

    The real reference set is :func:`pcpo.world.data.reference_set` (32 images per prompt, fixed seed);
    for a batch, FD is computed against the reference images *of the prompts present in the batch*, so
    evaluating on the held-out prompts compares like with like.
    """

    def __init__(self, classifier=None, device: torch.device | str = "cpu", reference=None):
        self.device = torch.device(device)
        self.classifier = _classifier(classifier, self.device)
        ref_images, ref_prompts = reference if reference is not None else data.reference_set()
        self.ref_prompts = list(ref_prompts)
        self.ref_features = classifier_features(ref_images.to(self.device), self.classifier)

    def reference_features(self, prompts: Sequence[str]) -> torch.Tensor:
        wanted = set(prompts)
        idx = [i for i, p in enumerate(self.ref_prompts) if p in wanted]
        if len(idx) < 2:
            raise ValueError(
                "prompts: none of the prompts is in the reference set; use pcpo.world.data.PROMPTS"
            )
        return self.ref_features[idx]

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, prompts: Sequence[str], base_images: torch.Tensor | None = None
    ) -> dict[str, float]:
        images = images.to(self.device)
        prompts = list(prompts)
        out = prompt_accuracy(images, prompts, self.classifier)
        feats = classifier_features(images, self.classifier)
        out["fd_real"] = frechet_distance(feats, self.reference_features(prompts))
        out["diversity"] = per_prompt_diversity(feats, prompts)
        if base_images is not None:
            out["fd_base"] = frechet_distance(
                feats, classifier_features(base_images.to(self.device), self.classifier)
            )
        return out

    compute = __call__
