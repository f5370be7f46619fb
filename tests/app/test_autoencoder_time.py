"""benchmarks/autoencoder_time.py: one JSON object, and the ratio is K-FAC's best seconds over the
best first-order optimizer's (seconds = the stored median steps x the measured mean step)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import autoencoder_time as at  # noqa: E402


def test_json_is_one_object_and_the_ratio_is_best_kfac_over_best_first_order(capsys, monkeypatch):
    # three cheap configurations (the stored ones' update periods make 100-step rounds)
    configs = [
        ("sgd", dict(lr=0.04), 8, 400, "test"),
        ("adamw", dict(lr=0.004), 8, 300, "test"),
        ("kfac-f1-i2", dict(lr=0.1, damping=0.03), 8, 100, "test"),
    ]
    monkeypatch.setattr(at, "CONFIGS", configs)
    assert at.main(["--rounds", "1", "--reps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # exactly one object: json.loads fails on more
    (rnd,) = out["rounds"]
    rows = rnd["rows"]
    assert [(r["optimizer"], r["batch"]) for r in rows] == [(n, b) for n, _, b, _, _ in configs]
    for r in rows:
        assert r["seconds"] == pytest.approx(r["ms"] / 1e3 * r["median_steps"])
    kfac = min(r["seconds"] for r in rows if r["optimizer"].startswith("kfac"))
    first = min(r["seconds"] for r in rows if not r["optimizer"].startswith("kfac"))
    assert out["median"] == pytest.approx(kfac / first)


def test_bad_counts_are_refused():
    with pytest.raises(SystemExit):
        at.main(["--rounds", "0"])
