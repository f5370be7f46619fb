"""`kfac-ext pipeline`: N SGD steps of the DP's split with torch.distributed.pipelining
(2 spawned Gloo processes on 127.0.0.1). On a model without batch statistics the loss
sequence equals the unsplit model's (same init, data and optimizer); a CIFAR ResNet
(BatchNorm) trains too; bad options are one-line errors before any process starts."""

import json
import math

import pytest
import torch

from kfac_ext.cli import main
from kfac_ext.placement.pipeline_cli import batch, loss_function, seeded_model


def _pipeline(capsys, *argv):
    code = main(["pipeline", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def unsplit_losses(spec, shape, steps, lr, microbatches, loss, seed=0):
    """The same training on one process, no pipeline: float64-free reference, the
    loss of a step = mean of its micro-batch losses, the gradient that mean's."""
    model = seeded_model(spec, seed)
    with torch.no_grad():
        out_shape = tuple(model(torch.zeros(shape)).shape)
    plan = {"seed": seed, "shape": shape, "out_shape": out_shape, "loss": loss}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = loss_function(loss)
    losses = []
    for step in range(steps):
        x, y = batch(plan, step)
        optimizer.zero_grad()
        micro = [loss_fn(model(xm), ym) for xm, ym in zip(x.chunk(microbatches), y.chunk(microbatches))]
        total = sum(micro) / microbatches
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    return losses


def test_transformer_loss_sequence_equals_the_unsplit_model(capsys):
    spec, shape = "_small_modules:tiny_transformer", (4, 5, 8)
    code, out, err = _pipeline(
        capsys,
        "--module",
        spec,
        "--input-shape",
        "4,5,8",
        "--devices",
        2,
        "--steps",
        3,
        "--lr",
        0.5,
        "--microbatches",
        2,
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert len(result["stages"]) == 2 and result["backend"] == "gloo"
    expected = unsplit_losses(spec, shape, 3, 0.5, 2, "ce")
    assert result["losses"] == pytest.approx(expected, abs=1e-5)
    assert expected[0] != expected[1]  # the steps really update the weights
    for s in result["stages"]:
        assert s["predicted_load"] > 0 and s["measured_ms"] > 0 and s["nodes"] > 0


def test_resnet_trains_as_a_1f1b_pipeline(capsys):
    code, out, err = _pipeline(
        capsys,
        "--module",
        "_small_modules:small_resnet",
        "--input-shape",
        "4,3,8,8",
        "--devices",
        2,
        "--steps",
        2,
        "--schedule",
        "1f1b",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["step", "loss"]
    losses = [float(line.split()[1]) for line in lines[1:3]]
    assert all(math.isfinite(v) for v in losses)
    assert "predicted load" in out and "measured ms" in out and "2 stages over gloo, 1f1b" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--devices", "0"], "--devices must be >= 1"),
        (["--devices", "100000"], "a pipeline runs one process per stage, at most 64"),
        (["--microbatches", "0"], "--microbatches must be >= 1"),
        (["--lr", "nan"], "--lr must be a positive number, got nan"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (
            ["--microbatches", "3"],
            "the batch size 4 (first entry of --input-shape) is not divisible by --microbatches 3",
        ),
        (["--loss", "ce", "--module", "_small_modules:identity_features"], "--loss ce needs (batch, classes) outputs"),
        (["--module", "nope.nope:f"], "--module: cannot import 'nope.nope'"),
    ],
)
def test_pipeline_option_errors_are_one_line(argv, message, capsys):
    base = ["--module", "_small_modules:tiny_transformer", "--input-shape", "4,5,8", "--devices", "2"]
    code, out, err = _pipeline(capsys, *base, *argv)
    assert code != 0 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_under_torchrun_each_process_is_one_stage(tmp_path):
    """torchrun starts the stages (2 processes, Gloo); rank 0 prints the one JSON object,
    and the losses are the unsplit model's, as with the self-spawned run."""
    import os
    import pathlib
    import signal
    import subprocess
    import sys

    here = pathlib.Path(__file__).resolve().parent
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "kfac_ext",
        "pipeline",
        "--module",
        "_small_modules:tiny_transformer",
        "--input-shape",
        "4,5,8",
        "--devices",
        "2",
        "--steps",
        "2",
        "--lr",
        "0.5",
        "--json",
    ]

    def run(argv):  # in its own session, so a hang kills torchrun's workers too
        p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    expected = unsplit_losses("_small_modules:tiny_transformer", (4, 5, 8), 2, 0.5, 2, "ce")
    assert result["losses"] == pytest.approx(expected, abs=1e-5)
    # too many processes for the split: one clear line from every rank, non-zero exit
    bad = cmd[:]
    bad[bad.index("2")] = "3"  # --nproc-per-node 3
    proc = run(bad)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "the split has 2 stages but torchrun started 3 processes" in proc.stderr


def test_a_stage_without_parameters_trains(capsys):
    """Three stages of Linear-ReLU-Linear: the ReLU's stage has no parameters; the loss
    sequence is still the unsplit model's."""
    spec = "_small_modules:linear_relu_linear"
    code, out, err = _pipeline(
        capsys,
        "--module",
        spec,
        "--input-shape",
        "4,8",
        "--devices",
        3,
        "--steps",
        3,
        "--lr",
        0.5,
        "--microbatches",
        2,
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert len(result["stages"]) == 3
    expected = unsplit_losses(spec, (4, 8), 3, 0.5, 2, "ce")
    assert result["losses"] == pytest.approx(expected, abs=1e-5)
