"""`kfac-ext train`: models, schedules, the CLI end to end, resume, torchrun."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from kfac_ext.app.models import build_model, digits_cnn, digits_mlp, resnet_cifar
from kfac_ext.app.train import RunState, Schedule, format_table, summarize
from kfac_ext.cli import main

# A tiny, fast configuration: the MLP on digits for a few epochs.
FAST = [
    "--model",
    "digits-mlp",
    "--epochs",
    "3",
    "--batch-size",
    "128",
    "--quiet",
    "--json",
    "--plot",
    "",
    "--threads",
    "1",
]


def _train(capsys, *flags):
    code = main(["train", *FAST, *flags])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("depth,params", [(20, 0.27e6), (32, 0.46e6), (56, 0.85e6)])
def test_resnet_cifar_matches_the_paper(depth, params):
    model = resnet_cifar(depth)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.02  # He et al. 2016, table 6
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n+1 convs + the Linear layer
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_option_b_projects_and_other_shapes_work():
    model = resnet_cifar(20, num_classes=7, in_channels=1, shortcut="B")
    assert len([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]) == 21
    assert model(torch.randn(3, 1, 28, 20)).shape == (3, 7)
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(21)
    with pytest.raises(ValueError, match="shortcut"):
        resnet_cifar(20, shortcut="C")


def test_option_a_shortcut_pads_channels_with_zeros():
    block = resnet_cifar(8).layer2[0]
    x = torch.randn(2, 16, 8, 8)
    sub = block.shortcut(x)
    assert sub.shape == (2, 32, 4, 4)
    assert torch.equal(sub[:, 8:24], x[:, :, ::2, ::2])
    assert not sub[:, :8].any() and not sub[:, 24:].any()


def test_digits_models_and_build_model():
    x = torch.randn(5, 1, 8, 8)
    assert digits_cnn()(x).shape == (5, 10) and digits_mlp()(x).shape == (5, 10)
    assert build_model("resnet32", 10, 3).fc.out_features == 10
    with pytest.raises(ValueError, match="digits-cnn"):
        build_model("vgg16")
    torch.manual_seed(3)
    a = digits_cnn().state_dict()
    torch.manual_seed(3)
    b = digits_cnn().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- schedules
def test_schedule_warmup_decay_and_growing_intervals():
    s = Schedule(
        peak_lr=0.2,
        steps_per_epoch=10,
        warmup_epochs=2,
        decay_epochs=(4, 6),
        decay_factor=0.1,
        factor_steps=3,
        inv_steps=10,
        growth=2.0,
    )
    assert s.lr(0) == pytest.approx(0.02)  # warm-up starts at lr/10
    assert s.lr(10) == pytest.approx(0.02 + 0.18 * 0.5)  # linear
    assert s.lr(20) == pytest.approx(0.2) and s.lr(39) == pytest.approx(0.2)
    assert s.lr(40) == pytest.approx(0.02) and s.lr(60) == pytest.approx(0.002)
    assert [s.factor_update_steps(t) for t in (0, 39, 40, 60)] == [3, 3, 6, 12]
    assert [s.inv_update_steps(t) for t in (0, 40, 60)] == [10, 20, 40]


# --------------------------------------------------------------------------- CLI, SGD
def test_sgd_run_json_has_the_promised_fields(capsys):
    out = _train(capsys, "--optimizer", "sgd", "--target-accuracy", "0.5")
    assert set(out) >= {"target_accuracy", "runs"} and list(out["runs"]) == ["sgd"]
    run = out["runs"]["sgd"]
    for key in ("time_to_target_s", "epochs_to_target", "final_test_accuracy", "step_ms_median", "wall_s"):
        assert key in run
    assert len(run["history"]) == 3 and run["steps"] == 3 * (1347 // 128)
    assert run["final_test_accuracy"] > 0.5  # an MLP learns digits in 3 epochs
    # Time to target is the training time at the first epoch that reached the target.
    first = next(r for r in run["history"] if r["test_accuracy"] >= 0.5)
    assert run["epochs_to_target"] == first["epoch"]
    assert run["time_to_target_s"] == first["train_time_s"] <= run["train_s"] <= run["wall_s"]
    losses = [r["train_loss"] for r in run["history"]]
    assert losses[-1] < losses[0]


def test_unreached_target_is_null(capsys):
    out = _train(capsys, "--optimizer", "sgd", "--epochs", "1", "--target-accuracy", "1.0", "--lr-sgd", "0.001")
    assert out["runs"]["sgd"]["epochs_to_target"] is None
    assert out["runs"]["sgd"]["time_to_target_s"] is None


def test_seed_changes_the_run_and_fixes_it(capsys):
    hist = lambda o: [(r["train_loss"], r["test_accuracy"]) for r in o["runs"]["sgd"]["history"]]  # noqa: E731
    a = _train(capsys, "--optimizer", "sgd", "--epochs", "1", "--seed", "1")
    b = _train(capsys, "--optimizer", "sgd", "--epochs", "1", "--seed", "1")
    c = _train(capsys, "--optimizer", "sgd", "--epochs", "1", "--seed", "2")
    assert hist(a) == hist(b) and hist(a) != hist(c)


def test_plot_and_table(tmp_path, capsys):
    png = tmp_path / "curves.png"
    code = main(
        [
            "train",
            "--model",
            "digits-mlp",
            "--epochs",
            "2",
            "--optimizer",
            "sgd",
            "--quiet",
            "--threads",
            "1",
            "--plot",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    assert "| sgd |" in out and "seconds to target" in out


def test_format_table_reports_overhead_and_ratio():
    def state(name, times, acc):
        s = RunState(name, {"lr": 0.1}, step_times=times, step=len(times), epoch=len(acc))
        s.history = [
            dict(epoch=i + 1, test_accuracy=a, test_loss=1.0, train_time_s=float(i + 1)) for i, a in enumerate(acc)
        ]
        s.train_time_s = float(len(acc))
        return s

    runs = {
        "sgd": summarize(state("sgd", [0.01] * 4, [0.5, 0.9, 0.95]), 0.9),
        "kfac": summarize(state("kfac", [0.015] * 4, [0.92, 0.96]), 0.9),
    }
    assert runs["sgd"]["epochs_to_target"] == 2 and runs["kfac"]["epochs_to_target"] == 1
    table = format_table(runs, 0.9)
    assert "+50%" in table and "K-FAC / SGD = 0.50" in table


def test_bad_arguments_give_clear_errors(capsys):
    assert main(["train", *FAST, "--lr-sgd", "-1", "--optimizer", "sgd"]) == 2
    assert "--lr-sgd must be > 0" in capsys.readouterr().err
    assert main(["train", *FAST, "--data", "cifar10", "--data-dir", "/nonexistent"]) == 2
    assert "data_batch_1" in capsys.readouterr().err


def test_cifar10_path_runs_a_resnet_end_to_end(tmp_path, capsys):
    from test_data import _write_fake_cifar

    _write_fake_cifar(str(tmp_path), n_per_batch=8)
    out = _train(
        capsys,
        "--data",
        "cifar10",
        "--data-dir",
        str(tmp_path),
        "--model",
        "resnet8",
        "--optimizer",
        "sgd",
        "--epochs",
        "1",
        "--batch-size",
        "20",
    )
    run = out["runs"]["sgd"]
    assert out["model"] == "resnet8" and run["steps"] == 2 and len(run["history"]) == 1
    assert 0.0 <= run["final_test_accuracy"] <= 1.0


# --------------------------------------------------------------------------- resume
def _history(out, name):
    return [(r["epoch"], r["train_loss"], r["test_loss"], r["test_accuracy"]) for r in out["runs"][name]["history"]]


def _check_resume_matches(tmp_path, capsys, optimizer, names):
    flags = ["--optimizer", optimizer, "--epochs", "3", "--decay-epochs", "2"]
    full = _train(capsys, *flags)
    part = _train(capsys, *flags, "--stop-after", "1", "--save", str(tmp_path))
    for n in names:
        assert _history(part, n) == _history(full, n)[:1]
    resumed = _train(capsys, *flags, "--resume", str(tmp_path), "--save", str(tmp_path))
    for n in names:
        assert _history(resumed, n) == _history(full, n)  # bit-identical curve


def test_resume_gives_the_uninterrupted_curve_sgd(tmp_path, capsys):
    _check_resume_matches(tmp_path, capsys, "sgd", ["sgd"])


def test_mismatched_or_corrupt_checkpoint_is_refused_and_kept(tmp_path, capsys):
    _train(capsys, "--optimizer", "sgd", "--epochs", "1", "--save", str(tmp_path))
    path = tmp_path / "sgd.pt"
    before = path.read_bytes()
    code = main(
        [
            "train",
            *FAST,
            "--optimizer",
            "sgd",
            "--epochs",
            "1",
            "--lr-sgd",
            "0.02",
            "--resume",
            str(tmp_path),
            "--save",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "lr: checkpoint" in err and path.read_bytes() == before
    assert "epochs" not in err  # only the setting that differs is named
    path.write_bytes(before[:100])
    code = main(
        ["train", *FAST, "--optimizer", "sgd", "--epochs", "1", "--resume", str(tmp_path), "--save", str(tmp_path)]
    )
    assert code == 2 and "corrupt" in capsys.readouterr().err
    assert path.read_bytes() == before[:100]
    assert main(["train", *FAST, "--resume", str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- K-FAC
def test_both_runs_share_initialisation_and_report_both(capsys):
    out = _train(capsys, "--optimizer", "both", "--epochs", "2", "--target-accuracy", "0.25")
    assert list(out["runs"]) == ["sgd", "kfac"]
    for run in out["runs"].values():
        assert run["final_test_accuracy"] > 0.25 and run["step_ms_median"] > 0  # chance: 0.1
    # Training K-FAC beside SGD leaves the SGD run exactly as it is alone (shared init,
    # data order and RNG stream are rebuilt from the seed for each run).
    sgd_only = _train(capsys, "--optimizer", "sgd", "--epochs", "2", "--target-accuracy", "0.25")
    assert _history(sgd_only, "sgd") == _history(out, "sgd")


def test_resume_gives_the_uninterrupted_curve_kfac(tmp_path, capsys):
    _check_resume_matches(tmp_path, capsys, "kfac", ["kfac"])


def test_resume_with_an_eigendecomposition_in_flight_gives_the_uninterrupted_curve(tmp_path, capsys):
    # 10 steps an epoch; with these intervals the update of step 8 lands in step 11,
    # after the checkpoint of epoch 1.
    flags = [
        "--optimizer",
        "kfac",
        "--epochs",
        "3",
        "--decay-epochs",
        "2",
        "--inv-update-steps",
        "4",
        "--inv-lag-steps",
        "3",
    ]
    full = _train(capsys, *flags)
    _train(capsys, *flags, "--stop-after", "1", "--save", str(tmp_path))
    saved = torch.load(tmp_path / "kfac.pt", weights_only=False)
    assert saved["preconditioner"]["pending_second_order"]["apply_step"] == 11
    resumed = _train(capsys, *flags, "--resume", str(tmp_path))
    assert _history(resumed, "kfac") == _history(full, "kfac")


def test_inverse_method_trains_and_is_part_of_the_checkpoint_config(tmp_path, capsys):
    out = _train(capsys, "--optimizer", "kfac", "--epochs", "1", "--compute-method", "inverse", "--save", str(tmp_path))
    assert 0.0 <= out["runs"]["kfac"]["final_test_accuracy"] <= 1.0
    saved = torch.load(tmp_path / "kfac.pt", weights_only=False)
    assert saved["config"]["compute_method"] == "inverse"
    assert all(
        "second_order" in e and len(e["second_order"]["A"]) == 1  # [damped inverse]
        for e in saved["preconditioner"]["layers"].values()
    )


def test_skip_layers_default_flag_and_bad_patterns(tmp_path, capsys):
    cnn = ["--model", "digits-cnn", "--optimizer", "kfac", "--epochs", "1"]
    # The digits default preconditions every layer of the CNN, the convolutions too.
    out = _train(capsys, *cnn, "--save", str(tmp_path / "all"))
    assert out["runs"]["kfac"]["config"]["skip_layers"] == []  # what ran, in the JSON
    saved = torch.load(tmp_path / "all" / "kfac.pt", weights_only=False)
    assert sorted(saved["preconditioner"]["layers"]) == ["0", "3", "7", "9"]
    # Conv2d leaves the convolutions (modules 0 and 3) to plain SGD steps.
    _train(capsys, *cnn, "--skip-layers", "Conv2d", "--save", str(tmp_path / "linear"))
    saved = torch.load(tmp_path / "linear" / "kfac.pt", weights_only=False)
    assert sorted(saved["preconditioner"]["layers"]) == ["7", "9"]
    assert saved["config"]["skip_layers"] == ["Conv2d"]
    # Resuming with other layers skipped is refused; the checkpoint is kept.
    before = (tmp_path / "all" / "kfac.pt").read_bytes()
    code = main(
        [
            "train",
            *FAST,
            *cnn,
            "--skip-layers",
            "Conv2d",
            "--resume",
            str(tmp_path / "all"),
            "--save",
            str(tmp_path / "all"),
        ]
    )
    assert code == 2 and "skip_layers" in capsys.readouterr().err
    assert (tmp_path / "all" / "kfac.pt").read_bytes() == before
    # Patterns that match every layer, or are not regular expressions: refused before
    # any run starts (the SGD run of `both` included), nothing written.
    for pattern, message in ((".", "leaves no layer"), ("(", "not a regular expression")):
        out = tmp_path / f"bad{len(message)}"
        code = main(["train", *FAST, *cnn, "--optimizer", "both", "--skip-layers", pattern, "--save", str(out)])
        assert code == 2 and message in capsys.readouterr().err
        assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- torchrun
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_processes_matches_one(tmp_path):
    """2 Gloo processes on the CPU run the same global batches as 1 process."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python")
    optimizer = "both"
    args = ["-m", "kfac_ext", "train", *FAST, "--optimizer", optimizer, "--epochs", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # Only rank 0 prints: exactly one JSON object on stdout.
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["world_size"] == 2
    for name in a["runs"]:
        acc1, acc2 = a["runs"][name]["final_test_accuracy"], b["runs"][name]["final_test_accuracy"]
        assert abs(acc1 - acc2) < 0.03, (name, acc1, acc2)
