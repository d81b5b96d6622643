import pytest
import torch

from pcpo.algo.advantages import GroupAdvantage, PerPromptStatTracker, PromptMeanGlobalStd, build_advantage


def test_group_normalisation_population_std():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    adv = GroupAdvantage()(r, ["a", "a", "a", "b", "b", "b"])
    s = (2 / 3) ** 0.5  # population std of 1,2,3
    torch.testing.assert_close(adv[:3], torch.tensor([-1 / s, 0.0, 1 / s]), rtol=1e-6, atol=1e-6)
    s2 = torch.tensor([10.0, 10.0, 16.0]).std(unbiased=False)
    torch.testing.assert_close(adv[3:], (torch.tensor([10.0, 10.0, 16.0]) - 12) / s2, rtol=1e-6, atol=1e-6)


def test_advantage_clip():
    r = torch.tensor([0.0] * 99 + [1.0])
    adv = GroupAdvantage(adv_clip=5.0)(r, [0] * 100)
    assert adv.max().item() == 5.0  # unclipped would be ~9.95
    with pytest.raises(ValueError, match="adv_clip"):
        GroupAdvantage(adv_clip=0)


def test_constant_group_gives_zero():
    adv = GroupAdvantage()(torch.ones(4), [0] * 4)
    assert torch.equal(adv, torch.zeros(4))


def test_prompt_mean_global_std():
    r = torch.tensor([1.0, 3.0, 10.0, 14.0])
    adv = PromptMeanGlobalStd(eps=0.0)(r, ["a", "a", "b", "b"])
    std = r.std(unbiased=False)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / std)


def test_stat_tracker_fallback_and_state_roundtrip():
    t = PerPromptStatTracker(buffer_size=4, min_count=3, eps=0.0)
    # first call: 2 entries for "a" < min_count -> batch stats
    r = torch.tensor([1.0, 2.0, 5.0, 7.0])
    adv = t(r, ["a", "a", "b", "b"])
    torch.testing.assert_close(adv, (r - r.mean()) / r.std(unbiased=False))
    # second call: "a" has 4 entries (1, 2, 3, 4) -> its own stats
    adv2 = t(torch.tensor([3.0, 4.0]), ["a", "a"])
    hist = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(adv2, (torch.tensor([3.0, 4.0]) - hist.mean()) / hist.std(unbiased=False))
    state = t.state_dict()
    t2 = PerPromptStatTracker(buffer_size=4, min_count=3, eps=0.0)
    t2.load_state_dict(state)
    x = torch.tensor([0.5, 9.0])
    torch.testing.assert_close(t(x, ["a", "a"]), t2(x, ["a", "a"]))
    assert len(t.buffers["a"]) == 4  # bounded buffer


def test_build_advantage():
    assert isinstance(build_advantage("group"), GroupAdvantage)
    with pytest.raises(ValueError, match="advantage"):
        build_advantage("nope")
