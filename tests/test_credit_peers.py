"""`pcpo credit` with the peer methods: a loss weight, an SDE window, the pipeline grid and CPS."""

import json

import pytest
import torch

from pcpo.algo.credit import pcpo_credit
from pcpo.cli import main
from pcpo.samplers import CPSSampler, FlowSampler


def _json(capsys, *args):
    assert main(["credit", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_pipeline_grid_zeta(capsys):
    out = _json(capsys, "--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "3", "--grid", "pipeline")
    assert out["zeta"] == pytest.approx(5.727, abs=5e-4)
    lin = _json(capsys, "--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "3")
    assert lin["zeta"] == pytest.approx(4.315, abs=5e-4)


def test_loss_weights_next_to_the_credit(capsys):
    out = _json(capsys, "--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "3",
                "--loss-weight", "inv_dt")
    assert [s["step"] for s in out["steps"]] == list(range(10))
    assert all(s["loss_weight"] == pytest.approx(1 / s["dt"]) for s in out["steps"])
    out = _json(capsys, "--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "3",
                "--loss-weight", "tempflow", "--loss-weight-options", "{coef: 1.73}")
    s = FlowSampler(10, eta=0.7, shift=3.0)
    _, _, std = s.coefficients()
    assert [r["loss_weight"] for r in out["steps"]] == pytest.approx((1.73 * std).tolist())


def test_window_rows_are_the_window_and_credit_is_over_it(capsys):
    out = _json(capsys, "--sampler", "dance-sde", "--steps", "16", "--eta", "0.3", "--shift", "3",
                "--window", "mix_grpo", "--window-options", "{size: 4, shift_interval: 2}", "--iteration", "5")
    # MixGRPO progressive, interval 2: after 5 iterations the window starts at 2
    assert [r["step"] for r in out["steps"]] == [2, 3, 4, 5] and all(r["trained"] for r in out["steps"])
    ref = pcpo_credit(FlowSampler(16, eta=0.3, noise="dance", shift=3.0, sde_steps=[2, 3, 4, 5]))
    assert [r["pcpo"] for r in out["steps"]] == pytest.approx(ref[2:6].tolist())


def test_tempflow_window_marks_untrained_branch_steps(capsys):
    out = _json(capsys, "--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "3",
                "--window", "tempflow", "--window-options", "{fraction: 0.5}")
    assert [r["step"] for r in out["steps"]] == list(range(9))
    assert [r["trained"] for r in out["steps"]] == [True] * 5 + [False] * 4


def test_cps_schemes(capsys):
    out = _json(capsys, "--sampler", "cps", "--steps", "10", "--eta", "0.8", "--shift", "3")
    s = CPSSampler(10, eta=0.8, shift=3.0)
    a, c, std = s.coefficients()
    mask = std > 0
    assert len(out["steps"]) == int(mask.sum()) == 9
    assert [r["native"] for r in out["steps"]] == pytest.approx((c[mask] / std[mask]).tolist())
    assert torch.isclose(torch.tensor(out["zeta"], dtype=torch.float64), pcpo_credit(s).sum())


@pytest.mark.parametrize("args, name", [
    (["--sampler", "ddim", "--steps", "10", "--eta", "1", "--window", "mix_grpo"], "--window"),
    (["--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--window", "mix_grpo",
      "--window-options", "{size: 3"], "--window-options"),
    (["--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--window", "mix_grpo",
      "--window-options", "{sizes: 3}"], "sde_window_options"),
    (["--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--loss-weight", "tempflow",
      "--loss-weight-options", "{scale: x}"], "scale"),
])
def test_bad_peer_arguments_one_line(args, name, capsys):
    assert main(["credit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert name in err and len(err.splitlines()) == 1


def test_ratio_transforms_as_effective_weights(capsys):
    """RatioNorm turns the native weight c/s into s * c/s = c; Flow-GRPO's CPS scaling into 2 s^2 * c/s."""
    out = _json(capsys, "--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "3",
                "--ratio-transform", "ratio_norm")
    s = FlowSampler(10, eta=0.7, shift=3.0)
    _, c, std = s.coefficients()
    assert [r["native_transformed"] for r in out["steps"]] == pytest.approx(c.tolist())
    assert [r["pcpo_transformed"] for r in out["steps"]] == pytest.approx(
        (std * pcpo_credit(s)).tolist())
    out = _json(capsys, "--sampler", "cps", "--steps", "10", "--eta", "0.8", "--shift", "3",
                "--ratio-transform", "flow_grpo_cps")
    cps = CPSSampler(10, eta=0.8, shift=3.0)
    _, c, std = cps.coefficients()
    m = std > 0
    assert [r["native_transformed"] for r in out["steps"]] == pytest.approx((2 * std[m] * c[m]).tolist())


def test_flux_grids_dancegrpo_static_shift_vs_the_stock_pipeline():
    """DanceGRPO samples FLUX on sd3_time_shift(3, linspace(1, 0, 17)); the stock FluxPipeline uses a dynamic
    shift from the image token count. real/dancegrpo-flux follows DanceGRPO (and its int(sigma*1000)/1000
    model time)."""
    from pcpo.samplers.flow import FLUX_SCHEDULER_CONFIG, flow_grid, pipeline_grid
    from pcpo.trainer.config import load_config

    dance = flow_grid(16, 3.0)
    stock = pipeline_grid(16, FLUX_SCHEDULER_CONFIG, image_seq_len=(720 // 16) ** 2)
    assert dance[0] == stock[0] == 1 and dance[-1] == stock[-1] == 0
    assert float((dance - stock).abs().max()) > 0.01
    cfg = load_config("real/dancegrpo-flux")
    assert (cfg.sampler.grid, cfg.sampler.shift, cfg.sampler.model_time) == ("linspace", 3.0, "floor1000")
