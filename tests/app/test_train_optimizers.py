"""`kfac-ext train`: the optimizer list (sgd, adamw, kfac, soap), interleaved runs, and the
autoencoder task."""

import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch

from kfac_ext.app import train, train_options
from kfac_ext.app.tasks import Autoencoder
from kfac_ext.app.train import RunState, format_table, summarize
from kfac_ext.app.train_options import parse_optimizers
from kfac_ext.cli import main

FAST = [
    "--model",
    "digits-mlp",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--quiet",
    "--json",
    "--plot",
    "",
    "--threads",
    "1",
]
AE = [
    "--task",
    "autoencoder",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--quiet",
    "--json",
    "--plot",
    "",
    "--threads",
    "1",
]
HAS_HEAVYBALL = importlib.util.find_spec("heavyball") is not None


def _train(capsys, *flags, base=FAST):
    code = main(["train", *base, *flags])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def _history(out, name):
    return [(r["epoch"], r["train_loss"], r["test_loss"]) for r in out["runs"][name]["history"]]


def test_optimizer_lists_expand_and_bad_names_are_refused(monkeypatch):
    assert parse_optimizers("sgd,adamw,kfac") == ("sgd", "adamw", "kfac")
    assert parse_optimizers("both") == ("sgd", "kfac")
    assert parse_optimizers("kfac, SGD,kfac") == ("kfac", "sgd")  # order kept, no repeats
    assert parse_optimizers("all") == (("sgd", "adamw", "kfac", "soap") if HAS_HEAVYBALL else ("sgd", "adamw", "kfac"))
    with pytest.raises(ValueError, match="--optimizer sgd,adam: unknown optimizer 'adam'"):
        parse_optimizers("sgd,adam")
    # Without heavyball, soap is named with the extra that provides it; `all` leaves it out.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "heavyball" else real(name, *a))
    with pytest.raises(ValueError, match=r"kfac_ext\[soap\]"):
        parse_optimizers("soap")
    assert parse_optimizers("all") == ("sgd", "adamw", "kfac")


def test_unknown_optimizer_is_one_line_before_training(capsys, monkeypatch):
    monkeypatch.setattr(train, "_train_run", lambda *a, **k: pytest.fail("trained"))
    code = main(["train", *FAST, "--optimizer", "sgd,rmsprop"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--optimizer" in err and "'rmsprop'" in err
    for flag, value in (("--adamw-weight-decay", "-1"), ("--target-loss", "1")):
        assert main(["train", *FAST, flag, value]) == 2
        assert flag in capsys.readouterr().err


def test_three_optimizers_report_every_field_and_interleaving_changes_no_curve(capsys):
    out = _train(capsys, "--optimizer", "sgd,adamw,kfac", "--target-accuracy", "0.3")
    assert list(out["runs"]) == ["sgd", "adamw", "kfac"] and out["target_accuracy"] == 0.3
    for name, run in out["runs"].items():
        for key in (
            "time_to_target_s",
            "epochs_to_target",
            "final_test_accuracy",
            "step_ms_median",
            "wall_s",
            "config",
        ):
            assert run[key] is not None, (name, key)
        assert run["config"]["optimizer"] == name and run["final_test_accuracy"] > 0.3
    adamw = out["runs"]["adamw"]["config"]
    assert adamw["lr"] == train_options.DEFAULTS["digits"]["lr_adamw"]
    assert adamw["weight_decay"] == train_options.DEFAULTS["digits"]["adamw_weight_decay"]
    assert "momentum" not in adamw
    # Each run alone gives the curve it has interleaved with the others.
    alone = _train(capsys, "--optimizer", "adamw", "--target-accuracy", "0.3")
    assert _history(alone, "adamw") == _history(out, "adamw")


def test_adamw_run_is_torch_adamw_with_the_schedule(capsys):
    """One epoch of `--optimizer adamw` against a hand-written loop (same init, data order)."""
    flags = [
        "--optimizer",
        "adamw",
        "--epochs",
        "1",
        "--lr-adamw",
        "0.002",
        "--adamw-weight-decay",
        "0.05",
        "--warmup-epochs",
        "0",
        "--seed",
        "3",
        "--decay-epochs",
    ]  # no decay: a constant lr
    out = _train(capsys, *flags)
    from kfac_ext.app.data import load_dataset
    from kfac_ext.app.models import build_model

    data = load_dataset("digits")
    torch.manual_seed(3)
    model = build_model("digits-mlp", data.num_classes, data.in_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=0.05)
    order = torch.randperm(len(data.train_y), generator=train._epoch_generator(3, 0, 0))
    gen = train._epoch_generator(3, 0, 1)
    losses = []
    for i in range(len(data.train_y) // 128):
        x, y = data.batch(order[i * 128 : (i + 1) * 128], True, gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert out["runs"]["adamw"]["history"][0]["train_loss"] == pytest.approx(np.mean(losses), rel=1e-6)


def test_adamw_betas_reach_the_optimizer_and_are_checked(capsys, monkeypatch):
    made = []
    real = torch.optim.AdamW

    def recording(*args, **kwargs):
        made.append(kwargs["betas"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    out = _train(capsys, "--optimizer", "adamw", "--epochs", "1", "--adamw-betas", "0.7", "0.9")
    assert made == [(0.7, 0.9)] and out["runs"]["adamw"]["config"]["betas"] == [0.7, 0.9]
    made.clear()
    default = _train(capsys, "--optimizer", "adamw", "--epochs", "1")["runs"]["adamw"]["config"]
    assert made == [train_options.TORCH_ADAMW_BETAS] and "betas" not in default  # older checkpoints resume
    assert main(["train", *FAST, "--adamw-betas", "1.0", "0.9"]) == 2
    assert "--adamw-betas" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_HEAVYBALL, reason="heavyball (the [soap] extra) not installed")
def test_soap_trains_when_heavyball_is_installed(capsys):
    out = _train(capsys, "--optimizer", "soap", "--epochs", "3", "--lr-soap", "0.01", "--target-accuracy", "0.3")
    assert out["runs"]["soap"]["final_test_accuracy"] > 0.3  # chance: 0.1
    assert out["runs"]["soap"]["config"]["weight_decay"] == train_options.DEFAULTS["digits"]["soap_weight_decay"]


def test_table_compares_kfac_with_every_baseline():
    def state(name, step_s, acc):
        s = RunState(name, {"lr": 0.1}, step_times=[step_s] * 4, step=4, epoch=len(acc))
        s.history = [
            dict(epoch=i + 1, test_accuracy=a, test_loss=1.0, train_time_s=float(i + 1)) for i, a in enumerate(acc)
        ]
        s.train_time_s = float(len(acc))
        return s

    runs = {
        "sgd": summarize(state("sgd", 0.01, [0.5, 0.9]), 0.9),
        "adamw": summarize(state("adamw", 0.02, [0.5, 0.6, 0.7, 0.95]), 0.9),
        "kfac": summarize(state("kfac", 0.015, [0.92]), 0.9),
    }
    table = format_table(runs, 0.9)
    assert "| adamw | 0.1 | 4 | 4.00 | 95.00% |" in table
    assert "vs SGD: +50%" in table and "vs AdamW: -25%" in table
    assert "K-FAC / SGD = 0.50" in table and "K-FAC / AdamW = 0.25" in table


# --------------------------------------------------------------------------- autoencoder
def test_autoencoder_pixels_are_the_digits_over_16():
    from sklearn.datasets import load_digits

    from kfac_ext.app.data import load_dataset

    task = Autoencoder(load_dataset("digits"))
    images = load_digits().images.reshape(-1, 64) / 16.0
    # Every training image is one of the raw images / 16 (same split as the classifier).
    raw = {tuple(np.round(r, 5)) for r in images}
    assert all(tuple(np.round(r, 5)) in raw for r in task.train_x.double().numpy())
    assert task.train_x.shape == (1347, 64) and task.test_x.shape == (450, 64)
    assert float(task.train_x.min()) == 0.0 and float(task.train_x.max()) == 1.0
    x = task.train_x[:5]
    out = torch.full_like(x, 0.5)
    want = ((out - x) ** 2).sum(1).mean()  # summed over pixels, mean over images
    assert task.loss(out, x).item() == pytest.approx(want.item())


def test_autoencoder_run_targets_the_training_loss(capsys, tmp_path):
    png = tmp_path / "ae.png"
    out = _train(capsys, "--optimizer", "sgd,adamw,kfac", "--target-loss", "100", "--plot", str(png), base=AE)
    assert out["task"] == "autoencoder" and out["target_loss"] == 100.0
    assert "target_accuracy" not in out and png.stat().st_size > 0
    for name, run in out["runs"].items():
        first = run["history"][0]
        assert run["epochs_to_target"] == 1 and run["time_to_target_s"] == first["train_time_s"]
        assert run["final_train_eval_loss"] == run["history"][-1]["train_eval_loss"] < 64
        assert run["final_test_accuracy"] is None and run["config"]["task"] == "autoencoder"
    # The autoencoder's K-FAC default is the inverse method; digits keeps the eigenbasis.
    assert out["runs"]["kfac"]["config"]["compute_method"] == "inverse"
    assert train_options.DEFAULTS["digits"]["compute_method"] == "eigen"
    unreached = _train(capsys, "--optimizer", "sgd", "--target-loss", "1e-6", base=AE)
    assert unreached["runs"]["sgd"]["time_to_target_s"] is None


def test_autoencoder_needs_digits_and_target_loss_needs_the_autoencoder(capsys):
    assert main(["train", *AE, "--data", "cifar10"]) == 2
    assert "--task autoencoder" in capsys.readouterr().err
    assert main(["train", *FAST, "--target-loss", "2"]) == 2
    assert "--target-loss applies to --task autoencoder" in capsys.readouterr().err


# --------------------------------------------------------------------------- K-FAC options
def test_kfac_options_reach_the_preconditioner_and_the_config(capsys, tmp_path):
    flags = [
        "--optimizer",
        "kfac",
        "--factor-init",
        "first_batch",
        "--per-example-g",
        "--adaptive-damping",
        "3",
        "--damping",
        "10",
        "--save",
        str(tmp_path),
    ]
    out = _train(capsys, *flags)
    cfg = out["runs"]["kfac"]["config"]
    assert (cfg["factor_init"], cfg["per_example_g"], cfg["adaptive_damping"]) == ("first_batch", True, 3)
    state = torch.load(tmp_path / "kfac.pt", weights_only=False)["preconditioner"]
    # 10 steps an epoch, a measurement every 3 steps: 6 ratios in 2 epochs, λ moved.
    assert state["adaptive_damping"]["updates"] == 6
    assert state["adaptive_damping"]["value"] != 10.0
    # The default run is the kfac-pytorch configuration.
    default = _train(capsys, "--optimizer", "kfac", "--epochs", "1")["runs"]["kfac"]["config"]
    assert (default["factor_init"], default["per_example_g"], default["adaptive_damping"]) == (
        train_options.DEFAULTS["digits"]["factor_init"],
        False,
        0,
    )
    assert main(["train", *FAST, "--adaptive-damping", "-1"]) == 2
    assert "--adaptive-damping" in capsys.readouterr().err


def test_relative_damping_flag_reaches_the_preconditioner_and_the_run_config(capsys, tmp_path):
    out = _train(capsys, "--optimizer", "kfac", "--epochs", "1", "--relative-damping", "--save", str(tmp_path))
    assert out["runs"]["kfac"]["config"]["relative_damping"] is True
    state = torch.load(tmp_path / "kfac.pt", weights_only=False)["preconditioner"]
    assert state["relative_damping"] is True
    # On digits it is the default; --no-relative-damping turns it off, and then the run config
    # has no key (only when set: older checkpoints still resume).
    default = _train(capsys, "--optimizer", "kfac", "--epochs", "1")["runs"]["kfac"]["config"]
    assert default["relative_damping"] is True and train_options.DEFAULTS["digits"]["relative_damping"] is True
    off = _train(capsys, "--optimizer", "kfac", "--epochs", "1", "--no-relative-damping")["runs"]["kfac"]["config"]
    assert "relative_damping" not in off
    # The other tasks keep λ added to the factors as they are.
    for task in (train_options.AUTOENCODER_DEFAULTS, train_options.LM_DEFAULTS, train_options.DEFAULTS["cifar10"]):
        assert task["relative_damping"] is False
    # --adaptive-damping does not combine with it: the default yields, an explicit flag is refused.
    adaptive = _train(capsys, "--optimizer", "kfac", "--epochs", "1", "--adaptive-damping", "3")
    assert "relative_damping" not in adaptive["runs"]["kfac"]["config"]
    assert main(["train", *FAST, "--optimizer", "kfac", "--relative-damping", "--adaptive-damping", "3"]) == 2
    assert "does not combine with an AdaptiveDamping" in capsys.readouterr().err


def test_auto_step_flag_makes_kfac_sgd_at_lr_1_and_resumes_identically(capsys, tmp_path):
    flags = ["--optimizer", "kfac", "--auto-step", "--auto-step-damping", "0.5", "--save", str(tmp_path / "a")]
    out = _train(capsys, *flags)
    cfg = out["runs"]["kfac"]["config"]
    assert (cfg["auto_step"], cfg["auto_step_damping"], cfg["auto_step_interval"]) == (True, 0.5, 5)
    assert (cfg["lr"], cfg["momentum"], cfg["kl_clip"], cfg["warmup_epochs"]) == (1.0, 0.0, None, 0.0)
    ckpt = torch.load(tmp_path / "a" / "kfac.pt", weights_only=False)
    group = ckpt["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1.0, 0.0, 0.0)
    auto = ckpt["preconditioner"]["auto_step"]
    # 10 steps an epoch, 2 epochs; λ measured at steps 0, 5, 10, 15 (each finished a step later).
    assert auto["steps"] == 20 and auto["damping"]["updates"] == 4
    assert auto["damping"]["value"] != 0.5 and auto["last_mu"] != 0.0
    assert [r["lr"] for r in out["runs"]["kfac"]["history"]] == [1.0, 1.0]
    assert out["runs"]["kfac"]["final_test_accuracy"] > 0.5
    # With a fixed λ (nothing pending at an epoch's end), stop-and-resume is the same run.
    fixed = ["--optimizer", "kfac", "--auto-step", "--auto-step-interval", "0"]
    whole = _train(capsys, *fixed)
    _train(capsys, *fixed, "--save", str(tmp_path / "b"), "--stop-after", "1")
    resumed = _train(capsys, *fixed, "--resume", str(tmp_path / "b"))
    assert _history(resumed, "kfac") == _history(whole, "kfac")
    # The default K-FAC run has no auto step (and keeps its config, hence its checkpoints).
    parser = argparse.ArgumentParser()
    train_options.add_arguments(parser)
    default = parser.parse_args(["--optimizer", "kfac"])
    train_options.resolve_defaults(default)
    cfg = train._run_config("kfac", default, train.World())
    assert "auto_step" not in cfg and cfg["lr"] == train_options.DEFAULTS["digits"]["lr_kfac"]
    for bad, flag in (
        (["--auto-step-damping", "0"], "--auto-step-damping"),
        (["--auto-step-interval", "-1"], "--auto-step-interval"),
        (["--auto-step", "--adaptive-damping", "3"], "--adaptive-damping"),
    ):
        assert main(["train", *FAST, *bad]) == 2
        assert flag in capsys.readouterr().err
