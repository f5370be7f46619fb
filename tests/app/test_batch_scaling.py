"""benchmarks/batch_scaling.py: the sweep's bookkeeping, the critical batch size, and a
tiny end-to-end run (two batch sizes, a loose target) that writes its JSON and plot."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import batch_scaling as bs  # noqa: E402


def test_critical_batch_is_where_doubling_stops_paying():
    batches = [32, 64, 128, 256]
    assert bs.critical_batch(batches, [400, 200, 110, 100]) == "128"  # 100/110 > 0.7
    assert bs.critical_batch(batches, [400, 300, 290, 280]) == "32"  # 300/400 > 0.7
    assert bs.critical_batch(batches, [400, 200, 100, 50]).startswith("> 256")
    assert bs.critical_batch(batches, [None, 200, 100, 50]) == "not determined (median never at B 32)"


def test_median_counts_never_as_infinite():
    assert bs.median_or_none([10, 12, None]) == 12
    assert bs.median_or_none([10, None, None]) is None


def test_evaluations_are_dense_early_and_within_7_percent_later():
    due = [s for s in range(1, 2001) if bs._eval_due(s)]
    assert due[:15] == list(range(1, 16))
    assert all(b / a <= 1.07 for a, b in zip(due[15:], due[16:]))
    assert len(due) < 200  # the evaluations cost less than the steps


def test_sweep_extends_the_grid_at_its_edge_and_gives_kfac_its_damping(monkeypatch):
    calls = []

    def fake(problem, name, setting, batch, seed, cap):
        calls.append(dict(setting))
        return max(1, round(100 / setting["lr"] * (1 + 0 * seed))), 0.0  # larger lr: better

    monkeypatch.setattr(bs, "steps_to_target", fake)
    problem = bs.Problem(
        "toy", 1.0, "loss", None, None, None, None, 100, center_lr=dict(sgd=1.0, kfac=1.0), damping=0.1
    )
    best, tried = bs.sweep(problem, "sgd", 64, [100], 10_000, lambda m: None)
    lrs = sorted(t["setting"]["lr"] for t in tried)
    # 0.5-4, three extensions up to 32, then 32 x 2^(+-1/2).
    assert len(tried) == 4 + bs.EDGE_EXTENSIONS + 2 and 32.0 in lrs
    assert best["setting"]["lr"] == max(lrs) == pytest.approx(32 * math.sqrt(2), rel=1e-2)
    best, tried = bs.sweep(problem, "kfac", 64, [100], 10_000, lambda m: None)
    assert {t["setting"]["damping"] for t in tried} == {0.1, 0.0333, 0.3}


def test_variants_stage_gives_every_optimizer_the_same_count(monkeypatch):
    monkeypatch.setattr(bs, "steps_to_target", lambda problem, name, setting, batch, seed, cap: (50, 0.0))
    variants = dict(kfac=[dict(method="eigen"), dict(approx="reduce")], adamw=[dict(beta2=0.95), dict(beta2=0.99)])
    problem = bs.Problem(
        "toy", 1.0, "loss", None, None, None, None, 100, center_lr=dict(adamw=1.0, kfac=1.0), variants=variants
    )
    counts = {}
    for name in ("adamw", "kfac", "kfac-f5-i20"):
        _, plain = bs.sweep(problem, name, 64, [100], 10_000, lambda m: None)
        _, tried = bs.sweep(problem, name, 64, [100], 10_000, lambda m: None, variants=True)
        counts[name] = len(tried) - len(plain)
        assert tried[-1]["setting"] == dict(tried[0]["setting"], **variants[name.split("-")[0]][-1])
    assert counts == {"adamw": 2, "kfac": 2, "kfac-f5-i20": 2}


def test_kfac_setting_reaches_the_preconditioner_kl_clip_off_and_factor_decay():
    torch = pytest.importorskip("torch")
    problem = bs.Problem("toy", 1.0, "loss", None, None, None, None, 100, center_lr=dict(kfac=1.0))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    _, pre = bs.make_optimizer("kfac", model, problem, dict(lr=0.1, damping=0.03))
    assert pre.kl_clip(0) == 0.001 and pre.factor_decay(0) == 0.95  # the defaults
    setting = dict(lr=0.1, damping=0.03, kl_clip=None, factor_decay=0.8)
    _, pre = bs.make_optimizer("kfac", model, problem, setting)
    assert pre.kl_clip(0) is None and pre.factor_decay(0) == 0.8
    assert bs._fmt_setting(setting) == "lr 0.1, λ 0.03, KL clip off, decay 0.8"
    setting = dict(lr=0.1, damping=0.03, factor_init="first_batch", per_example_g=True)
    _, pre = bs.make_optimizer("kfac", model, problem, setting, batch=8)
    assert pre.factor_init == "first_batch" and pre.g_scale == 64.0  # (8 x 1 loss term per sample)^2
    assert bs._fmt_setting(setting) == "lr 0.1, λ 0.03, init first_batch, per-example G on"
    with pytest.raises(ValueError):
        bs.make_optimizer("kfac", model, problem, setting)


def test_probe_settings_reach_adamw_and_the_preconditioner():
    """The knobs of the 2026-12-07 16:53 probes: AdamW's eps and weight decay, K-FAC's skipped
    layers, its kfac_approx and a factor on the per-example G scale."""
    torch = pytest.importorskip("torch")
    problem = bs.Problem("toy", 1.0, "loss", None, None, None, None, 100, center_lr=dict(kfac=1.0))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt, _ = bs.make_optimizer("adamw", model, problem, dict(lr=0.1, beta1=0.7, beta2=0.9))
    group = opt.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.7, 0.9), 1e-8, 0.0)
    setting = dict(lr=0.1, beta1=0.7, beta2=0.9, eps=1e-6, weight_decay=0.1)
    opt, _ = bs.make_optimizer("adamw", model, problem, setting)
    assert (opt.param_groups[0]["eps"], opt.param_groups[0]["weight_decay"]) == (1e-6, 0.1)
    assert bs._fmt_setting(setting) == "lr 0.1, β1 0.7, β2 0.9, eps 1e-06, wd 0.1"
    setting = dict(lr=0.1, damping=0.03, skip=["1"], approx="reduce", per_example_g=True, g_scale_mult=0.25)
    _, pre = bs.make_optimizer("kfac", model, problem, setting, batch=8)
    assert len(pre.layers) == 1 and pre.kfac_approx == "reduce" and pre.g_scale == 16.0  # 8² x 0.25
    assert bs._fmt_setting(setting) == "lr 0.1, λ 0.03, skip 1, reduce, per-example G on, G scale x 0.25"


def test_sgd_nesterov_setting_reaches_the_optimizer():
    """nesterov: the 2026-12-08 SGD probe's knob, off unless a setting turns it on, for SGD and
    for K-FAC's SGD alike."""
    torch = pytest.importorskip("torch")
    problem = bs.Problem("toy", 1.0, "loss", None, None, None, None, 100, center_lr=dict(kfac=1.0))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt, _ = bs.make_optimizer("sgd", model, problem, dict(lr=0.1))
    assert opt.param_groups[0]["nesterov"] is False
    opt, _ = bs.make_optimizer("sgd", model, problem, dict(lr=0.1, momentum=0.8, nesterov=True))
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.8
    opt, _ = bs.make_optimizer("kfac", model, problem, dict(lr=0.1, damping=0.03, nesterov=True))
    assert opt.param_groups[0]["nesterov"] is True
    assert bs._fmt_setting(dict(lr=0.1, nesterov=True)) == "lr 0.1, Nesterov on"


def test_relative_damping_is_the_preconditioners_option():
    """relative_damping: the setting turns on KFACPreconditioner(relative_damping=True)
    (tests/test_relative_damping.py holds its math)."""
    torch = pytest.importorskip("torch")
    problem = bs.Problem("toy", 1.0, "loss", None, None, None, None, 100, center_lr=dict(kfac=1.0))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    setting = dict(lr=0.1, damping=0.03, method="eigen")
    _, plain = bs.make_optimizer("kfac", model, problem, setting)
    _, rel = bs.make_optimizer("kfac", model, problem, dict(setting, relative_damping=True))
    assert not plain.relative_damping and rel.relative_damping
    assert bs._fmt_setting(dict(relative_damping=True)) == "relative λ on"


def test_lm_kfac_scales_g_per_loss_term_and_keeps_a_short_factor_memory():
    problem = bs.lm_problem()
    model = problem.make_model()
    _, pre = bs.make_optimizer("kfac", model, problem, dict(lr=0.01, damping=0.03), batch=8)
    assert pre.g_scale == float(8 * problem.tokens_per_sample) ** 2 and pre.factor_decay(0) == 0.5
    _, pre = bs.make_optimizer("kfac", model, problem, dict(lr=0.01, damping=0.03, per_example_g=False), batch=8)
    assert pre.g_scale == 1.0  # the batch-mean G, as before the 2026-12-07 14:09 sweep
    assert problem.variants["kfac"] == [dict(factor_decay=0.8), dict(factor_decay=0.95)]
    assert len(problem.variants["kfac"]) == len(problem.variants["adamw"])  # the same budget


def test_sweep_starts_every_setting_from_the_optimizers_base(monkeypatch):
    monkeypatch.setattr(bs, "steps_to_target", lambda problem, name, setting, batch, seed, cap: (50, 0.0))
    problem = bs.Problem(
        "toy",
        1.0,
        "loss",
        None,
        None,
        None,
        None,
        100,
        center_lr=dict(adamw=1.0),
        base=dict(adamw=dict(beta1=0.8, beta2=0.95)),
        variants=dict(adamw=[dict(beta1=0.9), dict(beta2=0.999)]),
    )
    _, tried = bs.sweep(problem, "adamw", 64, [100], 10_000, lambda m: None, variants=True)
    assert all(t["setting"]["beta1"] == 0.8 and t["setting"]["beta2"] == 0.95 for t in tried[:-2])
    assert [(t["setting"]["beta1"], t["setting"]["beta2"]) for t in tried[-2:]] == [(0.9, 0.95), (0.8, 0.999)]


def test_digits_problem_evaluates_without_the_batch_loss_gate(monkeypatch):
    problem = bs.digits_problem()
    assert problem.target == 0.03 and not problem.batch_loss_gate
    evaluated = []
    metric = problem.metric
    problem.metric = lambda model: evaluated.append(1) or metric(model)
    steps, last = bs.steps_to_target(problem, "sgd", dict(lr=0.05), 16, 100, 3)
    assert steps is None and len(evaluated) == 3 and 0.0 <= last <= 1.0  # every due step


def test_kfac_interval_names():
    assert bs.kfac_intervals("kfac") == (1, 1) and bs.kfac_intervals("kfac-lazy") == (2, 10)
    assert bs.kfac_intervals("kfac-f5-i20") == (5, 20) and bs.display("kfac-f5-i20") == "K-FAC 5/20"
    with pytest.raises(ValueError):
        bs.kfac_intervals("kfac-fast")


@pytest.mark.slow
def test_quick_run_writes_tables_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert (
        bs.main(
            [
                "--task",
                "autoencoder",
                "--batches",
                "32",
                "64",
                "--max-steps",
                "6",
                "--optimizers",
                "sgd",
                "adamw",
                "kfac",
                "--sweep-seeds",
                "100",
                "--seeds",
                "0",
                "1",
                "2",
                "--target",
                "20",
                "--time-reps",
                "2",
                "--json-out",
                str(out),
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "K-FAC / AdamW steps" in text and "Critical batch size" in text
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"sgd", "adamw", "kfac"}
    for name in res["results"]:
        for b in ("32", "64"):
            point = res["results"][name][b]
            assert len(point["steps"]) == 3 and point["sweep"]
            assert res["step_ms"][b][name] > 0
    assert png.stat().st_size > 1000
    with pytest.raises(SystemExit):
        bs.main(["--sweep-seeds", "0", "--seeds", "0", "1"])


@pytest.mark.slow
def test_one_process_per_optimizer_then_merge(tmp_path, capsys):
    common = [
        "--task",
        "autoencoder",
        "--batches",
        "32",
        "64",
        "--max-steps",
        "4",
        "--sweep-seeds",
        "100",
        "--seeds",
        "0",
        "--target",
        "20",
        "--time-reps",
        "2",
    ]
    runs = (("adamw", ["32", "64"]), ("kfac", ["32"]), ("kfac", ["64"]))  # K-FAC: two files
    for i, (name, sizes) in enumerate(runs):
        assert (
            bs.main(
                [
                    *common,
                    "--optimizers",
                    name,
                    "--batches",
                    *sizes,
                    "--sweep-only",
                    "--json-out",
                    str(tmp_path / f"{i}.json"),
                ]
            )
            == 0
        )
    assert capsys.readouterr().out == ""  # --sweep-only reports nothing
    out = tmp_path / "all.json"
    assert (
        bs.main([*common, "--merge", *(str(tmp_path / f"{i}.json.partial") for i in range(3)), "--json-out", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"adamw", "kfac"} and set(res["results"]["kfac"]) == {"32", "64"}
    assert set(res["step_ms"]["64"]) == {"adamw", "kfac"}
    assert "K-FAC / AdamW step time" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_runs_the_stored_settings_without_a_sweep(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert (
        bs.main(
            [
                "--quick",
                "--batches",
                "32",
                "--max-steps",
                "5",
                "--target",
                "20",
                "--time-reps",
                "2",
                "--json-out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"sgd", "adamw", "kfac"}
    assert res["results"]["kfac"]["32"]["setting"] == bs.SWEPT["autoencoder"]["kfac"][32]
    assert all(r["32"]["sweep"] == [] for r in res["results"].values())
    # Each optimizer's fastest batch, re-timed in one round-robin loop.
    assert {r["optimizer"] for r in res["best_batch_times"]} <= {"sgd", "adamw", "kfac"}
    assert all(r["seconds"] == pytest.approx(r["median_steps"] * r["ms"] / 1000) for r in res["best_batch_times"])
    assert "one round-robin loop" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bs.main(["--quick", "--task", "digits"])


def test_timing_covers_whole_update_periods():
    """The mean step time weighs update steps as training does: the timed steps are a whole
    number of every K-FAC optimizer's update period."""
    assert bs.update_period(["sgd", "adamw"]) == 1
    assert bs.update_period(["sgd", "kfac-lazy"]) == 10
    assert bs.update_period(["kfac-lazy", "kfac-f5-i20", "kfac"]) == 20
    assert bs.update_period(["kfac-f3-i7"]) == 21
    assert bs.whole_periods(30, ["kfac-lazy"]) == 30
    assert bs.whole_periods(30, ["kfac-f5-i20"]) == 40
    assert bs.whole_periods(1, ["sgd"]) == 1


def test_round_robin_times_is_the_mean_over_whole_periods(monkeypatch):
    """Time to target is the sum of the steps: an optimizer whose every 10th step also
    updates its inverses is charged those steps (the median would hide them)."""
    problem = bs.PROBLEMS["digits"]()
    calls = {"n": 0}

    def fake_step(problem, model, opt, pre, batch, gen):
        calls["n"] += 1
        return 10.0 if calls["n"] % 10 == 0 else 1.0

    monkeypatch.setattr(bs, "timed_step", fake_step)
    (t,) = bs.round_robin_times(problem, [("kfac-lazy", dict(lr=0.1, damping=0.1), 16)], reps=15)
    assert calls["n"] == 3 + 20  # warm-up, then 15 rounded up to two periods of 10
    assert t == pytest.approx((18 * 1.0 + 2 * 10.0) / 20)


def test_warmup_ramps_the_optimizers_lr_linearly_then_holds_it(monkeypatch):
    """The 2026-12-08 AdamW probe's warm-up: step s runs at lr x min(1, s / warmup)."""
    torch = pytest.importorskip("torch")
    seen = []

    def make_optimizer(name, model, problem, setting, batch=None):
        opt = torch.optim.AdamW(model.parameters(), lr=setting["lr"])
        step = opt.step
        opt.step = lambda: seen.append(opt.param_groups[0]["lr"]) or step()
        return opt, None

    monkeypatch.setattr(bs, "make_optimizer", make_optimizer)
    problem = bs.Problem(
        "toy",
        -1.0,  # never reached
        "loss",
        lambda: torch.nn.Linear(2, 1),
        lambda batch, gen: (torch.randn(batch, 2, generator=gen), torch.zeros(batch, 1)),
        torch.nn.functional.mse_loss,
        lambda model: 1.0,
        100,
        center_lr=dict(adamw=1.0),
    )
    assert bs.steps_to_target(problem, "adamw", dict(lr=0.4, warmup=4), 8, 0, 6) == (None, 1.0)
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    seen.clear()
    bs.steps_to_target(problem, "adamw", dict(lr=0.4), 8, 0, 3)
    assert seen == [0.4, 0.4, 0.4]


def test_base_option_starts_a_first_order_optimizers_sweep_from_its_settings(monkeypatch, tmp_path):
    seen = []

    def fake_steps(problem, name, setting, batch, seed, cap):
        seen.append((name, dict(setting)))
        return 50, 0.0

    monkeypatch.setattr(bs, "steps_to_target", fake_steps)
    argv = ["--task", "autoencoder", "--optimizers", "adamw", "--batches", "32", "--sweep-seeds", "100"]
    argv += ["--seeds", "0", "--sweep-only", "--json-out", str(tmp_path / "a.json")]
    assert bs.main([*argv, "--base", "adamw", '{"beta1": 0.7, "beta2": 0.9}']) == 0
    assert seen and all(n == "adamw" and s["beta1"] == 0.7 and s["beta2"] == 0.9 for n, s in seen)
    res = json.loads((tmp_path / "a.json.partial").read_text())
    assert res["adamw"]["32"]["setting"]["beta1"] == 0.7


@pytest.mark.parametrize("base", [["kfac", "{}"], ["nosuch", "{}"], ["adamw", "[1]"], ["adamw", "{beta1: 0.7}"]])
def test_base_option_rejects_kfac_unknown_optimizers_and_non_objects(base, capsys):
    with pytest.raises(SystemExit):
        bs.main(["--task", "autoencoder", "--base", *base])
    assert "--base" in capsys.readouterr().err
