import json

import pytest

from pcpo.cli import main


def test_credit_json(capsys):
    assert main(["credit", "--sampler", "dance-sde", "--steps", "16", "--eta", "0.3", "--shift", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["zeta"] == pytest.approx(13.343, abs=5e-4)
    assert len(out["steps"]) == 16
    assert set(out["steps"][0]) == {"t", "dt", "native", "pcpo"}
    assert sum(s["pcpo"] for s in out["steps"]) == pytest.approx(out["zeta"])


def test_credit_table_and_plot(tmp_path, capsys):
    png = tmp_path / "w.png"
    assert main(["credit", "--sampler", "ddim", "--steps", "50", "--eta", "1", "--schedule", "sd15", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "3.2748" in out and "0.5169" in out
    assert png.stat().st_size > 5000


@pytest.mark.parametrize(
    "args, name",
    [
        (["--sampler", "ddim", "--steps", "-2", "--eta", "1"], "steps"),
        (["--sampler", "ddim", "--steps", "10", "--eta", "-1"], "eta"),
        (["--sampler", "flow-sde", "--steps", "10", "--eta", "0.7", "--shift", "0"], "shift"),
        (["--sampler", "ddim", "--steps", "10", "--eta", "1", "--schedule", "sd9"], "schedule"),
        (["--sampler", "ddim", "--steps", "10", "--eta", "1", "--w-star", "-1"], "w_star"),
    ],
)
def test_credit_bad_arguments(args, name, capsys):
    assert main(["credit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert name in err and len(err.splitlines()) == 1
