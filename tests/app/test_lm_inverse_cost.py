"""benchmarks/lm_inverse_cost.py: --race-rows picks the race's configurations (AdamW B 8 always)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
torch = pytest.importorskip("torch")
import batch_scaling as bs  # noqa: E402
import lm_inverse_cost as lic  # noqa: E402


def test_race_rows_times_only_the_named_rows_and_adamw(monkeypatch):
    timed = []
    monkeypatch.setattr(bs, "timed_step", lambda problem, model, opt, pre, batch, gen: timed.append(batch) or 0.01)
    problem = bs.Problem(
        "toy", 1.0, "loss", lambda: torch.nn.Sequential(torch.nn.Linear(3, 2)), None, None, None, 100, center_lr={}
    )
    out = lic.race(problem, 10, False, ["K-FAC every step B 16, momentum 0.8"])
    assert list(out["rows"]) == ["AdamW B 8", "K-FAC every step B 16, momentum 0.8"]
    assert out["rows"]["K-FAC every step B 16, momentum 0.8"]["vs_adamw_b8"] == pytest.approx(75 / 176)
    assert len(timed) == 2 * (10 + 3)
    assert len(lic.race(problem, 10, False)["rows"]) == len(lic.RACE)


def test_race_rows_rejects_an_unknown_label(capsys):
    with pytest.raises(SystemExit):
        lic.main(["--race-only", "--race-rows", "K-FAC B 99"])
    assert "unknown ['K-FAC B 99']" in capsys.readouterr().err
