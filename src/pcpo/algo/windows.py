"""SDE windows: which sampler steps draw noise, and which are trained, in a training iteration.

Flow-GRPO-Fast, MixGRPO and TempFlow-GRPO sample with noise on a few steps only (the Euler ODE
elsewhere) and train only those. A window entry is registered in :data:`WINDOWS` as
``fn(num_steps, iteration, gen, **options) -> Window``; its metadata says whether the trainer draws one
window per training iteration (``per="iteration"``) or one per rollout batch (``per="batch"``), and
which ``options`` it takes (``train.sde_window_options``).

The trainer builds the iteration's sampler with noise only on ``Window.sde_steps``
(``FlowSampler.with_window`` / ``CPSSampler.with_window``), so every other step has s = 0, no
log-density and no trained pair; ``Window.trained`` are the steps eligible for training (the run's
timestep selection then picks among them; the peers train them all, i.e. fraction 1).

Registered windows (reference code in brackets):

* ``none``: every step stochastic and eligible (DDPO, DanceGRPO, Flow-GRPO).
* ``flow_grpo_fast`` (Flow-GRPO-Fast, ``sd3_pipeline_with_logprob_fast.py``): one window per sampling
  call (``per="batch"``): ``start`` uniform on the integers ``[lo, hi − size]``
  (``random.randint(lo, hi − size)``), SDE and trained on ``start, …, start + size − 1``, ODE elsewhere.
  Options ``size`` (``sde_window_size``, 3 in the published SD3.5-M/FLUX configs; 0 = Flow-GRPO's
  no-window case: steps 0…N−2 SDE, the last ODE) and ``window_range`` (``sde_window_range``, default
  ``(0, N // 2)`` as published). ``shared_prefix=True`` reproduces the first Flow-GRPO-Fast release,
  where a group's members start from one initial noise and share the ODE prefix, branching at the window
  start (its branch step was ``randint(0, N // 2)`` with 2 SDE steps: ``size=2``,
  ``window_range=(0, N // 2 + 2)``).
* ``mix_grpo`` (MixGRPO, ``fastvideo/utils/grpo_states.py``): a sliding window shared by all rollouts of
  an iteration: ``range(cur, min(cur + size, limit))`` with ``limit = N − 2`` (MixGRPO's
  ``max_timesteps = sampling_steps − 2``, so the last step is never in the window). ``cur`` starts at 0
  and, after every iteration, the counter of iterations at this position grows by 1; when it reaches
  the shift interval it resets and ``cur`` moves by ``stride``; past ``limit`` it rolls back to 0
  (``roll_back``) or stays at ``limit`` (then the window is empty). Strategies: ``progressive``
  (interval ``shift_interval``), ``decay`` (interval ``max(min_interval, int(max_interval·(1 − p) +
  min_interval·p))`` with ``p = cur/limit``: the window moves faster as it goes), ``exp_decay``
  (``ceil(shift_interval·exp(−exp_k·max(0, cur − exp_threshold)))``) and ``random`` (iteration 0 at 0,
  then ``cur`` uniform on ``[0, limit − size]`` every iteration). Defaults are the published
  ``finetune_flux_grpo_MixGRPO.sh`` (25 steps): size 4, interval 25, stride 1 (``prog_overlap``),
  roll back, decay bounds 10 and 1.
* ``tempflow`` (TempFlow-GRPO, ``sd3_pipeline_with_logprob_perstep.py``, ``train_sd3_pr.py``): see
  below; ``branching="per_step"``.

**Branching** (``Window.branching``) tells the trainer how the rollouts of a group relate:

* ``"none"``: every trajectory runs on its own from its initial noise.
* ``"prefix"``: the group shares one initial noise; its ODE prefix (steps before ``sde_steps[0]``) is the
  same for every member, so it may be run once per prompt and the state copied to the group.
* ``"per_step"`` (TempFlow-GRPO's trajectory branching): for each prompt the trainer runs one ODE
  trajectory x_0 → … (deterministic at every step). At every branch step b in ``sde_steps`` it takes
  the ODE state x_b and the prediction v̂_b already computed there, draws ``children`` SDE samples
  x_{b+1}^{(k)} = a_b·x_b − c_b·v̂_b + s_b·z^{(k)} (the flow SDE at step b only), and continues each child
  with the ODE from t_{b+1} to 0 (``sampler.deterministic()`` steps b+1…N−1) to an image with reward
  r_b^{(k)}. The rewards of step b's children form that step's group: the advantage of child k is
  ``(r_b^{(k)} − mean_k r_b)/(std_k r_b + 1e-4)`` (Flow-GRPO's per-prompt tracker applied column by
  column, population std; with ``global_std`` the std over all rows of column b). The trained pair of
  child k at step b is (state x_b, next state x_{b+1}^{(k)}, noise z^{(k)}, old prediction v̂_b) with that
  advantage; nothing else of the child is trained. TempFlow's SD3 script branches at steps 0…N−2 (the
  ODE trajectory's last step is never taken) with 6 children and trains the first int(0.99·N) of
  them; its FLUX script branches at all N steps. Its trainer also skips the first two epochs
  (no sampling, no update), which this window does not model.

:meth:`Window.forwards` counts the model evaluations a group's rollout costs under each branching (a CFG
pair counts once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..registry import Registry

BRANCHINGS = ("none", "prefix", "per_step")


@dataclass
class Window:
    """The SDE steps of an iteration and the steps trained there.

    sde_steps: steps sampled with noise (all others are ODE steps), sorted.  trained: the steps eligible
    for training (a subset of ``sde_steps``).  branching: ``"none"``, ``"prefix"`` or ``"per_step"``
    (module docstring).  children: SDE children per branch step (``"per_step"`` only).
    """

    sde_steps: list[int]
    trained: list[int]
    branching: str = "none"
    children: int = 0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.sde_steps = sorted(int(i) for i in self.sde_steps)
        self.trained = sorted(int(i) for i in self.trained)
        if not set(self.trained) <= set(self.sde_steps):
            raise ValueError(f"Window: trained steps {self.trained} must be SDE steps {self.sde_steps}")
        if self.branching not in BRANCHINGS:
            raise ValueError(f"Window: branching must be one of {BRANCHINGS}, got {self.branching!r}")
        if self.branching == "per_step" and self.children < 1:
            raise ValueError("Window: per_step branching needs children >= 1")

    def forwards(self, num_steps: int, group_size: int) -> int:
        """Model evaluations to roll out one group over ``num_steps`` steps.

        ``"none"``: group_size·N.  ``"prefix"``: the ODE prefix once, then group_size·(N − first SDE step).
        ``"per_step"`` (one ODE trajectory and its children; ``group_size`` is ignored): the ODE
        trajectory up to the last branch step, plus children·(N − 1 − b) for each branch step b (the SDE
        step itself reuses the ODE trajectory's prediction at b).
        """
        if self.branching == "none" or not self.sde_steps:
            return group_size * num_steps
        if self.branching == "prefix":
            first = self.sde_steps[0]
            return first + group_size * (num_steps - first)
        return (self.sde_steps[-1] + 1) + sum(self.children * (num_steps - 1 - b) for b in self.sde_steps)


WindowFn = Callable[..., Window]   # (num_steps, iteration, gen, **options) -> Window
WINDOWS: Registry[WindowFn] = Registry("SDE window", field="train.sde_window")


def _int_option(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"train.sde_window_options.{name}: must be an integer >= {minimum}, got {value!r}")
    return value


@WINDOWS.register("none", per="iteration", options=())
def no_window(num_steps: int, iteration: int, gen: torch.Generator | None) -> Window:
    """Every step stochastic and trained."""
    steps = list(range(num_steps))
    return Window(steps, steps)


@WINDOWS.register("flow_grpo_fast", per="batch", options=("size", "window_range", "shared_prefix"))
def flow_grpo_fast(num_steps: int, iteration: int, gen: torch.Generator | None, size: int = 3,
                   window_range: tuple[int, int] | list[int] | None = None,
                   shared_prefix: bool = False) -> Window:
    """Flow-GRPO-Fast: ``size`` consecutive SDE (and trained) steps starting uniformly in
    ``[lo, hi − size]``, ``(lo, hi) = window_range`` (default ``(0, N // 2)``); ``size = 0``: steps 0…N−2."""
    size = _int_option("size", size, 0)
    if size == 0:
        steps = list(range(num_steps - 1)) or [0]
        return Window(steps, steps, "prefix" if shared_prefix else "none")
    lo, hi = (0, num_steps // 2) if window_range is None else tuple(window_range)
    lo, hi = _int_option("window_range", lo, 0), _int_option("window_range", hi, 0)
    if hi > num_steps or hi - lo < size:
        raise ConfigError(f"train.sde_window_options.window_range: ({lo}, {hi}) must lie within [0, {num_steps}] "
                          f"and hold size = {size} steps")
    start = int(torch.randint(lo, hi - size + 1, (1,), generator=gen))
    steps = list(range(start, start + size))
    return Window(steps, steps, "prefix" if shared_prefix else "none", info={"start": start})


MIX_STRATEGIES = ("progressive", "random", "decay", "exp_decay")


def mix_grpo_position(iteration: int, strategy: str, size: int, limit: int, shift_interval: int, stride: int,
                      roll_back: bool, max_interval: int, min_interval: int, exp_threshold: int,
                      exp_k: float) -> tuple[int, int]:
    """``(cur, iterations at cur)`` of MixGRPO's deterministic strategies after ``iteration`` updates."""
    cur, at = 0, 0
    for _ in range(iteration):
        at += 1
        if strategy == "progressive":
            interval = shift_interval
        elif strategy == "decay":
            p = cur / limit
            interval = max(min_interval, int(max_interval * (1 - p) + min_interval * p))
        else:
            interval = math.ceil(shift_interval * math.exp(-exp_k * max(0, cur - exp_threshold)))
        if at >= interval:
            at, cur = 0, cur + stride
        if cur > limit:
            if roll_back:
                cur, at = 0, 0
            else:
                cur = limit
    return cur, at


@WINDOWS.register("mix_grpo", per="iteration",
                  options=("strategy", "size", "shift_interval", "stride", "roll_back", "max_interval",
                           "min_interval", "limit", "exp_threshold", "exp_k"))
def mix_grpo(num_steps: int, iteration: int, gen: torch.Generator | None, strategy: str = "progressive",
             size: int = 4, shift_interval: int = 25, stride: int | None = 1, roll_back: bool = True,
             max_interval: int | None = 10, min_interval: int | None = 1, limit: int | None = None,
             exp_threshold: int = 13, exp_k: float = 0.1) -> Window:
    """MixGRPO's sliding window at training iteration ``iteration`` (0-based); ``stride=None`` moves by
    ``size`` (MixGRPO without ``prog_overlap``); ``limit`` defaults to N − 2; ``max_interval`` /
    ``min_interval`` None take MixGRPO's own defaults (``shift_interval`` and ``max(1, shift_interval // 4)``)."""
    if strategy not in MIX_STRATEGIES:
        raise ConfigError(f"train.sde_window_options.strategy: unknown MixGRPO strategy {strategy!r}; "
                          f"choose one of {', '.join(MIX_STRATEGIES)}")
    size = _int_option("size", size, 1)
    shift_interval = _int_option("shift_interval", shift_interval, 1)
    stride = size if stride is None else _int_option("stride", stride, 0)
    limit = num_steps - 2 if limit is None else _int_option("limit", limit, 1)
    if limit > num_steps or limit < 1:
        raise ConfigError(f"train.sde_window_options.limit: must be in [1, {num_steps}], got {limit}")
    max_interval = shift_interval if max_interval is None else _int_option("max_interval", max_interval, 1)
    min_interval = max(1, shift_interval // 4) if min_interval is None else _int_option("min_interval", min_interval, 1)
    iteration = int(iteration)
    if strategy == "random":
        if limit - size < 0:
            raise ConfigError(f"train.sde_window_options.size: {size} does not fit below limit {limit}")
        cur = 0 if iteration == 0 else int(torch.randint(0, limit - size + 1, (1,), generator=gen))
        at = 0
    else:
        cur, at = mix_grpo_position(iteration, strategy, size, limit, shift_interval, stride, roll_back,
                                    max_interval, min_interval, exp_threshold, exp_k)
    steps = list(range(cur, min(cur + size, limit)))
    return Window(steps, steps, info={"cur": cur, "iters_at_cur": at})


@WINDOWS.register("tempflow", per="iteration", options=("children", "include_last", "fraction"))
def tempflow(num_steps: int, iteration: int, gen: torch.Generator | None, children: int = 6,
             include_last: bool = False, fraction: float = 0.99) -> Window:
    """TempFlow-GRPO's trajectory branching: branch steps 0…N−2 (``include_last``: 0…N−1) with ``children``
    SDE children each; the first ``int(N·fraction)`` branch steps are trained."""
    children = _int_option("children", children, 1)
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ConfigError(f"train.sde_window_options.fraction: must be in (0, 1], got {fraction!r}")
    branches = list(range(num_steps if include_last else num_steps - 1)) or [0]
    trained = branches[: max(1, int(num_steps * fraction))]
    return Window(branches, trained, "per_step", children)


def window_at(name: str, num_steps: int, iteration: int, gen: torch.Generator | None = None,
              options: dict | None = None) -> Window:
    """The registered window ``name`` at ``iteration`` (options checked against the entry's own)."""
    fn = WINDOWS.get(name)
    opts = dict(options or {})
    allowed = WINDOWS.meta(name)["options"]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ConfigError(f"train.sde_window_options: window {name!r} takes "
                          f"{', '.join(allowed) or 'no options'}; got {', '.join(unknown)}")
    return fn(num_steps, iteration, gen, **opts)
