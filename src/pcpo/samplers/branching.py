"""Trajectory loops for branched rollouts: a group sharing an ODE prefix (Flow-GRPO-Fast) and
TempFlow-GRPO's per-step branching (one ODE trajectory per prompt, SDE children at every branch step).

Both return a :class:`pcpo.samplers.Trajectory` whose rows are ordinary trained trajectories for the
trainer: every row holds, at every step, the state it was in, the noise it drew and the prediction made
there, so the exact log-ratio of a trained step is computed as for a plain rollout
(docs/method.md §2). What differs is how many model evaluations they cost, which the functions return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from . import Predict, Trajectory, rollout
from .base import Sampler

__all__ = ["rollout_shared_prefix", "rollout_per_step"]


@torch.no_grad()
def rollout_shared_prefix(sampler: Sampler, x: torch.Tensor, predict: Callable[..., torch.Tensor],
                          groups: Sequence[int], first: int, generator: torch.Generator | None = None,
                          on_step: Callable[[], None] | None = None) -> tuple[Trajectory, int]:
    """Rows of one group share their initial noise and the ODE prefix before step ``first``; run the
    prefix once per group and branch the group at ``first`` (the first SDE step).

    ``predict(x, step_index, rows)`` evaluates the rows ``rows`` (long [R], indices into ``x``) of the
    batch (so conditioning is selected per row); ``groups`` gives each row's group id. Rows of a group
    must start from the same noise (the prefix is deterministic, so this equals rolling each row out on
    its own). Returns the trajectory and the number of row-steps evaluated.
    """
    B = x.shape[0]
    groups = list(groups)
    if len(groups) != B:
        raise ValueError(f"rollout_shared_prefix: {len(groups)} group ids for {B} rows")
    reps: dict[int, int] = {}
    for r, g in enumerate(groups):
        reps.setdefault(g, r)
    rep_rows = torch.tensor(list(reps.values()), dtype=torch.long)
    for r, g in enumerate(groups):
        if not torch.equal(x[r], x[reps[g]]):
            raise ValueError("rollout_shared_prefix: rows of a group must share the initial noise "
                             "(set sampler.shared_noise or the window's shared_prefix)")
    member = torch.tensor([list(reps).index(g) for g in groups], dtype=torch.long)
    pre = rollout(sampler, x[rep_rows], lambda xx, i: predict(xx, i, rep_rows), generator, on_step,
                  start=0, stop=first)
    post = rollout(sampler, pre.final[member], lambda xx, i: predict(xx, i, torch.arange(B)), generator,
                   on_step, start=first)
    cat = [torch.cat([getattr(pre, k)[member], getattr(post, k)], dim=1) for k in ("states", "noise", "preds")]
    return Trajectory(*cat, post.final), first * len(reps) + (sampler.num_steps - first) * B


@torch.no_grad()
def rollout_per_step(sde: Sampler, ode: Sampler, x: torch.Tensor, predict: Predict, branches: Sequence[int],
                     children: int, generator: torch.Generator | None = None,
                     on_step: Callable[[], None] | None = None) -> tuple[Trajectory, torch.Tensor, int]:
    """TempFlow-GRPO's trajectory branching for a batch of prompts (one row of ``x`` per prompt).

    Runs the ODE trajectory of each prompt with ``ode`` up to the last branch step; at every branch step
    b it draws ``children`` SDE transitions from the ODE state x_b with the prediction already made there
    (``sde.step(b, …)``, so ``sde`` must draw noise at b) and continues each child with the ODE to the
    end. Rows are ordered (prompt, branch, child); each row is an ordinary trajectory whose step b holds
    (x_b, z, v̂_b) and whose other steps hold its own ODE states. ``predict(x, step_index, rows)``
    evaluates rows ``rows`` of the *prompt* batch. Returns the trajectory, the branch step of every row
    (long [P·len(branches)·children]) and the model evaluations (row-steps) it cost.
    """
    if sde.num_steps != ode.num_steps or not torch.equal(sde.timesteps, ode.timesteps):
        raise ValueError("rollout_per_step: the SDE and ODE samplers must share one grid")
    N, P = ode.num_steps, x.shape[0]
    branches = sorted(int(b) for b in branches)
    if not branches:
        raise ValueError("rollout_per_step: no branch steps")
    for b in branches:
        if not bool(sde.stochastic[b]):
            raise ValueError(f"rollout_per_step: the SDE sampler draws no noise at branch step {b}")
    rows_of_prompt = torch.arange(P)
    trunk = rollout(ode, x, lambda xx, i: predict(xx, i, rows_of_prompt), generator, on_step,
                    start=0, stop=branches[-1] + 1)
    cost = P * (branches[-1] + 1)
    K, S = int(children), len(branches)
    R = P * S * K
    shape = (R, N, *x.shape[1:])
    states = torch.zeros(shape, dtype=torch.float32, device=x.device)
    noise = torch.zeros_like(states)
    preds = torch.zeros_like(states)
    finals = torch.empty((R, *x.shape[1:]), dtype=torch.float32, device=x.device)
    branch_of = torch.empty(R, dtype=torch.long)
    prompt_rows = torch.arange(P).repeat_interleave(K)           # [P·K]: the prompt of each child
    for s, b in enumerate(branches):
        xb = trunk.states[:, b].repeat_interleave(K, dim=0)
        vb = trunk.preds[:, b].repeat_interleave(K, dim=0)
        out = sde.step(b, xb, vb, generator=generator)
        child = rollout(ode, out.prev_sample, lambda xx, i: predict(xx, i, prompt_rows), generator, on_step,
                        start=b + 1)
        cost += P * K * (N - 1 - b)
        # row index of (prompt p, branch s, child k) = (p·S + s)·K + k
        idx = (torch.arange(P).repeat_interleave(K) * S + s) * K + torch.arange(K).repeat(P)
        states[idx, : b + 1] = trunk.states[:, : b + 1].repeat_interleave(K, dim=0)
        preds[idx, : b + 1] = trunk.preds[:, : b + 1].repeat_interleave(K, dim=0)
        noise[idx, b] = out.noise.float()
        states[idx, b + 1:] = child.states
        noise[idx, b + 1:] = child.noise
        preds[idx, b + 1:] = child.preds
        finals[idx] = child.final
        branch_of[idx] = b
    return Trajectory(states, noise, preds, finals), branch_of, cost
