"""Gold metrics on inputs with known answers (closed forms), and the world classifier's accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcpo.world import data, metrics


def test_frechet_self_is_zero_and_shift_is_squared_norm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 16, generator=g, dtype=torch.float64)
    assert metrics.frechet_distance(a, a) < 1e-8
    delta = torch.linspace(-1, 1, 16, dtype=torch.float64)
    # a shifted copy has the same covariance: FD = ||delta||^2 exactly
    assert abs(metrics.frechet_distance(a, a + delta) - float(delta.pow(2).sum())) < 1e-8
    # growing the shift grows FD quadratically
    fds = [metrics.frechet_distance(a, a + k * delta) for k in (1, 2, 3)]
    assert np.allclose(np.array(fds) / fds[0], [1, 4, 9], rtol=1e-6)


def test_gaussian_closed_form_scaled_covariance():
    # N(0, I) vs N(0, s^2 I) in d dims: FD = d (1 - s)^2
    d, s = 8, 3.0
    fd = metrics.gaussian_frechet_distance(np.zeros(d), np.eye(d), np.zeros(d), s**2 * np.eye(d))
    assert abs(fd - d * (1 - s) ** 2) < 1e-9


def test_frechet_small_sets_stable():
    # fewer samples than dimensions: rank-deficient covariances, still finite, real, >= 0, and ~0 for itself
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(10, 64, generator=g), torch.randn(12, 64, generator=g)
    fab = metrics.frechet_distance(a, b)
    assert np.isfinite(fab) and fab > 0
    assert metrics.frechet_distance(a, a) < 1e-6
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.frechet_distance(a[:1], b)


def test_diversity():
    f = torch.ones(6, 4)
    assert metrics.per_prompt_diversity(f, ["a"] * 3 + ["b"] * 3) == 0.0
    f2 = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])
    # prompt a: one pair at distance 5; prompt b: identical -> mean over prompts 2.5
    assert metrics.per_prompt_diversity(f2, ["a", "a", "b", "b"]) == pytest.approx(2.5)
    assert np.isnan(metrics.per_prompt_diversity(f2[:2], ["a", "b"]))


def test_classifier_heldout_accuracy_on_real_images():
    from pcpo.world.classifier import accuracy, load_classifier

    clf = load_classifier()
    assert sum(p.numel() for p in clf.parameters()) < 80_000
    acc = accuracy(clf, n=2048, seed=4321)  # fresh images, a seed never used in training
    assert acc >= 0.98, acc
    x, p = data.sample_images(len(data.HELDOUT_PROMPTS) * 32, 77, list(data.HELDOUT_PROMPTS) * 32)
    assert metrics.prompt_accuracy(x, p)["prompt_accuracy"] >= 0.98


def test_gold_metrics_real_vs_real_and_vs_collapsed():
    gm = metrics.GoldMetrics()
    x, p = data.sample_images(256, 11, [data.PROMPTS[i % 32] for i in range(256)])
    m = gm(x, p, base_images=data.sample_images(256, 12, p)[0])
    assert m["prompt_accuracy"] >= 0.97 and m["color_accuracy"] >= 0.99
    # collapse: every image of a prompt identical -> diversity 0, FD to real much larger
    collapsed = x[:32].repeat(8, 1, 1, 1)
    m2 = gm(collapsed, p)
    assert m2["diversity"] == 0.0 and m["diversity"] > 0.5
    assert m2["fd_real"] > 3 * m["fd_real"] and m["fd_base"] < m2["fd_real"]
    # FD only against the reference images of the prompts present (held-out subset works)
    xh, ph = data.sample_images(64, 13, list(data.HELDOUT_PROMPTS) * 8)
    assert gm(xh, ph)["fd_real"] < 3 * m["fd_real"] + 1.0
