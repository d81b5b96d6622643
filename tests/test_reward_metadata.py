"""Per-prompt metadata reaches the rewards that ask for it: ``call_reward`` chooses from the signature,
the world's ``color_match_metadata`` scores against the colour the metadata names, weighted sums, the
trainer's rollout and evaluation (metadata aligned with the images across rollout batches), ``pcpo
eval``'s reward statistics, and the remote reward's wire format and server."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import micro
from pcpo.errors import PcpoError
from pcpo.eval.evaluate import reward_stats
from pcpo.prompts import load_prompts
from pcpo.rewards.registry import WeightedSum, accepts_metadata, build_reward, call_reward
from pcpo.rewards.remote import RewardServerError, decode_request, encode_request
from pcpo.rewards.world import color_match_score
from pcpo.trainer.config import load_config
from pcpo.trainer.trainer import Trainer
from pcpo.world import data

micro.register()

WORLD = ["a red circle", "an orange cross", "a blue square", "a green triangle"]


def world_images(prompts, seed: int = 0) -> torch.Tensor:
    ids = torch.tensor([data.prompt_id(p) for p in prompts])
    return data.render(ids, generator=seed)


def shifted(color: str) -> str:
    """Another world colour (the next one): metadata that deliberately disagrees with the prompt."""
    names = data.COLOR_NAMES
    return names[(names.index(color) + 1) % len(names)]


def recolored(prompt: str, color: str) -> str:
    c, s = data.parse_prompt(prompt)
    return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {s}"


# ---------------------------------------------------------------------------------- call_reward


def test_call_reward_passes_metadata_only_to_rewards_that_take_it():
    seen = {}

    def classic(images, prompts):
        return torch.zeros(len(prompts))

    def aware(images, prompts, *, metadata=None):
        seen["aware"] = metadata
        return torch.ones(len(prompts))

    class Obj:
        def __call__(self, images, prompts, metadata=None):
            seen["obj"] = metadata
            return torch.full((len(prompts),), 2.0)

    def var_kw(images, prompts, **kw):
        seen["kw"] = kw
        return torch.full((len(prompts),), 3.0)

    meta = ({"a": 1}, {"a": 2})
    x = torch.zeros(2, 3, 4, 4)
    assert not accepts_metadata(classic) and not accepts_metadata(lambda i, p: i)
    assert accepts_metadata(aware) and accepts_metadata(Obj()) and accepts_metadata(var_kw)
    assert call_reward(classic, x, ["p", "q"], meta).tolist() == [0.0, 0.0]
    assert call_reward(aware, x, ["p", "q"], meta).tolist() == [1.0, 1.0]
    assert seen["aware"] == [{"a": 1}, {"a": 2}]
    assert call_reward(Obj(), x, ["p", "q"], None).tolist() == [2.0, 2.0] and seen["obj"] is None
    call_reward(var_kw, x, ["p", "q"], meta)
    assert seen["kw"] == {"metadata": [{"a": 1}, {"a": 2}]}
    with pytest.raises(ValueError, match="3 entries for 2 prompts"):
        call_reward(aware, x, ["p", "q"], [{}, {}, {}])


# ---------------------------------------------------------------------------------- the world reward


def test_color_match_metadata_scores_the_colour_the_metadata_names():
    imgs = world_images(WORLD)
    reward = build_reward("color_match_metadata")
    aligned = [{"color": data.parse_prompt(p)[0]} for p in WORLD]
    got = call_reward(reward, imgs, WORLD, aligned)
    assert torch.equal(got, color_match_score(imgs, WORLD))
    assert got.min() > 0.05  # the rendered shape covers a real fraction of the image
    # metadata naming another colour: scored against that colour, as color_match on the recoloured prompts
    other = [{"color": shifted(m["color"])} for m in aligned]
    got_other = call_reward(reward, imgs, WORLD, other)
    assert torch.equal(got_other, color_match_score(imgs, [recolored(p, m["color"]) for p, m in zip(WORLD, other)]))
    assert (got_other < got).all()
    # another field name and threshold
    custom = build_reward("color_match_metadata", field="target", threshold=0.4)
    assert torch.equal(call_reward(custom, imgs, WORLD, [{"target": m["color"]} for m in aligned]),
                       color_match_score(imgs, WORLD, 0.4))


def test_color_match_metadata_errors_name_the_field():
    imgs = world_images(WORLD[:2])
    reward = build_reward("color_match_metadata")
    with pytest.raises(PcpoError, match=r"needs per-prompt metadata with a 'color' field") as e:
        call_reward(reward, imgs, WORLD[:2], None)
    assert "\n" not in str(e.value)
    with pytest.raises(PcpoError, match=r"metadata 'color' of image 1 is 'purple'; use one of red"):
        call_reward(reward, imgs, WORLD[:2], [{"color": "red"}, {"color": "purple"}])
    with pytest.raises(PcpoError, match=r"metadata 'color' of image 0 is None"):
        call_reward(reward, imgs, WORLD[:2], [{"tag": "colors"}, {"color": "red"}])


def test_weighted_sum_hands_metadata_to_the_terms_that_take_it():
    imgs = world_images(WORLD)
    meta = [{"color": shifted(data.parse_prompt(p)[0])} for p in WORLD]
    total = WeightedSum({"color_match_metadata": (2.0, build_reward("color_match_metadata")),
                         "brightness": (0.5, build_reward("brightness"))})
    assert accepts_metadata(total)
    expect = 2.0 * call_reward(build_reward("color_match_metadata"), imgs, WORLD, meta) \
        + 0.5 * build_reward("brightness")(imgs, WORLD)
    assert torch.allclose(call_reward(total, imgs, WORLD, meta), expect)
    comps = total.components(imgs, WORLD, meta)
    assert torch.equal(comps["color_match_metadata"], call_reward(build_reward("color_match_metadata"), imgs,
                                                                  WORLD, meta))
    stats, r = reward_stats(total, imgs, WORLD, meta)  # what pcpo eval reports
    assert torch.allclose(r, expect)
    assert stats["reward_color_match_metadata"] == pytest.approx(float(comps["color_match_metadata"].mean()))


# ---------------------------------------------------------------------------------- the trainer

#: the metadata of the prompt file: which image channel the recording reward scores, per prompt
CHANNEL = {"a red cat": 0, "a green dog": 1, "a blue bird": 2}
EVAL_CHANNEL = {"a red cat": 2, "a green fox": 0}


class RecordingReward:
    """Mean of the image channel its metadata names; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts, *, metadata=None):
        self.calls.append((images.clone(), list(prompts), metadata))
        return torch.stack([images[i, m["channel"]].mean() for i, m in enumerate(metadata)])


def _prompt_file(path, table):
    path.write_text("".join(json.dumps({"prompt": p, "channel": c, "tag": f"t{c}"}) + "\n" for p, c in table.items()))
    return str(path)


def test_trainer_gives_rewards_metadata_aligned_with_images_across_rollout_batches(tmp_path):
    train = _prompt_file(tmp_path / "train_metadata.jsonl", CHANNEL)
    evalp = _prompt_file(tmp_path / "eval_metadata.jsonl", EVAL_CHANNEL)
    cfg = load_config(None, [
        "model.family=micro-flow", "eval.gold=false", "log.progress=false", "log.tensorboard=false",
        f"data.prompts={train}", f"data.eval_prompts={evalp}", "data.group_size=4", "data.prompts_per_epoch=3",
        "sampler.rollout_batch=5", "eval.images_per_prompt=3", "log.per_sample=true", "train.minibatch_size=0",
        "train.advantage=group", "sampler.guidance_scale=3.0",
    ])
    reward = RecordingReward()
    trainer = Trainer(cfg, tmp_path / "run", reward_fn=reward)
    assert trainer.train_prompt_set.metadata_for(["a blue bird"]) == [{"channel": 2, "tag": "t2"}]
    record = trainer.train_epoch(1)
    images, prompts, meta = reward.calls[-1]
    assert len(prompts) == 12 and sorted(set(prompts)) == sorted(CHANNEL)  # 12 images from 3 rollout batches
    assert meta == [{"channel": CHANNEL[p], "tag": f"t{CHANNEL[p]}"} for p in prompts]
    # the logged per-sample rewards are those of each image under its own prompt's channel (independent map)
    expect = [float(images[i, CHANNEL[p]].mean()) for i, p in enumerate(prompts)]
    assert record["rewards"] == pytest.approx(expect, abs=1e-6)
    # evaluation: the eval prompt file's metadata, repeated per image like the prompts
    ev = trainer.evaluate(1)
    images, prompts, meta = reward.calls[-1]
    assert prompts == [p for p in EVAL_CHANNEL for _ in range(3)]
    assert [m["channel"] for m in meta] == [EVAL_CHANNEL[p] for p in prompts]
    assert ev["eval_reward_mean"] == pytest.approx(
        sum(float(images[i, EVAL_CHANNEL[p]].mean()) for i, p in enumerate(prompts)) / len(prompts), abs=1e-6)


def test_trainer_calls_classic_rewards_as_before(tmp_path):
    train = _prompt_file(tmp_path / "train_metadata.jsonl", CHANNEL)
    cfg = load_config(None, [
        "model.family=micro-flow", "reward.name=redness", "eval.gold=false", "log.progress=false",
        "log.tensorboard=false", f"data.prompts={train}", "data.eval_prompts=[a red cat]", "data.group_size=4",
        "data.prompts_per_epoch=2", "train.minibatch_size=0", "train.advantage=group",
    ])
    calls = []

    def classic(images, prompts):
        calls.append(len(prompts))
        return micro.redness(images, prompts)

    Trainer(cfg, tmp_path / "run", reward_fn=classic).train_epoch(1)
    assert calls == [8]


# ---------------------------------------------------------------------------------- the remote reward


def test_wire_format_carries_metadata():
    imgs = world_images(WORLD[:2])
    meta = [{"color": "red", "include": [{"class": "circle", "count": 1}]}, {"color": "orange"}]
    got_imgs, got_prompts, got_meta = decode_request(encode_request(imgs, WORLD[:2], "float32", meta),
                                                     with_metadata=True)
    assert got_prompts == WORLD[:2] and got_meta == meta and torch.equal(got_imgs, imgs)
    assert decode_request(encode_request(imgs, WORLD[:2]), with_metadata=True)[2] is None
    assert len(decode_request(encode_request(imgs, WORLD[:2], metadata=meta))) == 2  # old two-value form
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        encode_request(imgs, WORLD[:2], metadata=[{"x": object()}, {}])
    with pytest.raises(ValueError, match="1 metadata entries for 2 prompts"):
        encode_request(imgs, WORLD[:2], metadata=[{}])


def test_remote_reward_sends_metadata_to_the_served_reward():
    from pcpo.rewards.server import make_reward_server

    local = build_reward("color_match_metadata")
    server = make_reward_server(local, "color_match_metadata", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        remote = build_reward("remote", url=f"http://127.0.0.1:{server.server_address[1]}", timeout=10, retries=0,
                              encoding="float32")
        imgs = world_images(WORLD)
        meta = [{"color": shifted(data.parse_prompt(p)[0])} for p in WORLD]
        assert accepts_metadata(remote)
        assert torch.equal(call_reward(remote, imgs, WORLD, meta), call_reward(local, imgs, WORLD, meta))
        with pytest.raises(RewardServerError, match="HTTP 422: reward color_match_metadata rejects the request: "
                                                    r"PcpoError: reward color_match_metadata: needs per-prompt "
                                                    "metadata with a 'color' field") as e:
            call_reward(remote, imgs, WORLD, None)
        assert "serve-reward" not in str(e.value)  # the server is up: no advice to start it
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_prompt_set_metadata_is_what_the_reward_gets(tmp_path):
    f = tmp_path / "geneval_metadata.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "tag": "colors", "color": data.parse_prompt(p)[0]}) + "\n"
                         for p in WORLD))
    ps = load_prompts(str(f), "data.prompts")
    batch = [WORLD[2], WORLD[0], WORLD[2]]
    imgs = world_images(batch)
    got = call_reward(build_reward("color_match_metadata"), imgs, batch, ps.metadata_for(batch))
    assert torch.equal(got, color_match_score(imgs, batch))
