"""Fault suite for `kfac-ext train` and `kfac-ext bench` (issue 19): what a user can get wrong.

Every case asserts what the user sees: one line on stderr naming the flag or the
file, an exit code (2: a bad argument or input; 1: the run failed on its own;
130: interrupted; 143: stopped by SIGTERM), nothing on stdout under --json, and, where the fault is known
before any work, that no training step ran (``_train_run`` is replaced by a
tripwire). The CLI runs in-process through ``kfac_ext.cli.main``; only SIGINT,
SIGTERM and a SIGKILL inside a save use a subprocess.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from kfac_ext.app import train as train_module
from kfac_ext.app.checkpoint import FORMAT, load_checkpoint
from kfac_ext.cli import main

FAST = [
    "--model",
    "digits-mlp",
    "--epochs",
    "1",
    "--batch-size",
    "128",
    "--quiet",
    "--json",
    "--plot",
    "",
    "--threads",
    "1",
]


def _cli(capsys, *argv):
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _train(capsys, *flags):
    return _cli(capsys, "train", *FAST, *flags)


def _assert_one_line_error(code, out, err, *words, exit_code=2):
    assert code == exit_code, err
    assert out == "", out  # --json: stdout stays clean
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any run starts training: the fault must be caught before."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a run started training before the fault was reported")

    monkeypatch.setattr(train_module, "_train_run", tripwire)


# --------------------------------------------------------------------------- bad flag values
BAD_VALUES = [
    ("--device", "tpu"),
    ("--device", "cuda:0"),
    ("--device", "CPU"),
    ("--lr-sgd", "nan"),
    ("--lr-sgd", "inf"),
    ("--lr-sgd", "0"),
    ("--lr-kfac", "nan"),
    ("--lr-kfac", "-1"),
    ("--momentum", "-0.1"),
    ("--momentum", "1"),
    ("--momentum", "nan"),
    ("--weight-decay", "-1"),
    ("--weight-decay", "nan"),
    ("--warmup-epochs", "-1"),
    ("--warmup-epochs", "nan"),
    ("--warmup-epochs", "inf"),
    ("--decay-epochs", "-1"),
    ("--decay-epochs", "nan"),
    ("--decay-epochs", "99"),
    ("--target-accuracy", "2"),
    ("--target-accuracy", "0"),
    ("--target-accuracy", "nan"),
    ("--epochs", "0"),
    ("--epochs", "-3"),
    ("--batch-size", "0"),
    ("--batch-size", "-5"),
    ("--damping", "0"),
    ("--damping", "-1"),
    ("--damping", "nan"),
    ("--factor-decay", "1"),
    ("--factor-decay", "-0.1"),
    ("--factor-decay", "nan"),
    ("--kl-clip", "0"),
    ("--kl-clip", "nan"),
    ("--factor-update-steps", "0"),
    ("--inv-update-steps", "0"),
    ("--inv-lag-steps", "-1"),
    ("--factor-update-steps", str(2**31)),
    ("--inv-update-steps", str(10**20)),
    ("--interval-growth", "0.5"),
    ("--interval-growth", "nan"),
    ("--interval-growth", "inf"),
    ("--seed", "-1"),
    ("--seed", str(2**32)),
    ("--threads", "-1"),
    ("--threads", "1000000"),  # the latter: an OpenBLAS segfault
    ("--stop-after", "0"),
    ("--data-dir", "/tmp"),  # digits reads no folder: silently ignored before
    ("--skip-layers", "["),
]


@pytest.mark.parametrize("flag,value", BAD_VALUES)
def test_bad_value_is_refused_up_front_naming_the_flag(capsys, no_training, flag, value):
    code, out, err = _train(capsys, flag, value)
    _assert_one_line_error(code, out, err, flag)


@pytest.mark.parametrize("optimizer", ["sgd", "kfac", "both"])
@pytest.mark.parametrize("value", ["-1", "nan", "0", "2", "inf"])
def test_decay_factor_is_checked_for_every_optimizer(capsys, no_training, optimizer, value):
    # -1 used to flip the lr's sign at the first decay (gradient ascent, exit 0), nan to
    # end in "lower the learning rate" after an epoch.
    code, out, err = _train(capsys, "--optimizer", optimizer, "--epochs", "2", "--decay-factor", value)
    _assert_one_line_error(code, out, err, "--decay-factor", "(0, 1]")


@pytest.mark.parametrize("growth", ["1e308", "1e150"])
def test_interval_growth_that_overflows_after_the_decays_is_refused(capsys, no_training, growth):
    # Used to raise OverflowError at the first (or third) lr decay, mid-run.
    code, out, err = _train(
        capsys, "--optimizer", "kfac", "--epochs", "3", "--decay-epochs", "1", "1", "1", "--interval-growth", growth
    )
    _assert_one_line_error(code, out, err, "--interval-growth", "2**31")


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--epochs", "x"], ["--epochs", "invalid int"]),
        (["--batch-size", "1.5"], ["--batch-size"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
        (["--data", "mnist"], ["--data", "invalid choice"]),
        (["--lr-sgd"], ["--lr-sgd", "expected one argument"]),
    ],
)
def test_argparse_errors_are_one_line_with_exit_2(capsys, argv, words):
    code, out, err = _cli(capsys, "train", *argv)
    _assert_one_line_error(code, out, err, *words, "--help")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build or machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(capsys, no_training):
    code, out, err = _train(capsys, "--device", "cuda")
    _assert_one_line_error(code, out, err, "--device cuda", "--device cpu")


# --------------------------------------------------------------------------- data
def test_batch_larger_than_the_training_set_is_refused(capsys, no_training):
    code, out, err = _train(capsys, "--batch-size", "100000")
    _assert_one_line_error(code, out, err, "--batch-size 100000", "1347 training samples")


def test_batch_not_divisible_by_the_processes_is_refused():
    from argparse import Namespace

    from kfac_ext.app.validation import check_fits_data

    with pytest.raises(ValueError, match=r"--batch-size 3: must be divisible .* \(2\)"):
        check_fits_data(Namespace(batch_size=3), "digits", 100, 2)
    check_fits_data(Namespace(batch_size=100), "digits", 100, 4)


def _fake_cifar(folder, edit=None):
    from test_data import _rewrite_batch, _write_fake_cifar

    _write_fake_cifar(str(folder), n_per_batch=8)
    if edit:
        _rewrite_batch(str(folder), *edit)


@pytest.mark.parametrize(
    "edit,words",
    [
        (
            ("data_batch_3", torch.zeros(8, 3072, dtype=torch.uint8).numpy(), [0] * 7 + [255]),
            ["data_batch_3", "label 255"],
        ),
        (("test_batch", torch.zeros(0, 3072, dtype=torch.uint8).numpy(), []), ["test_batch", "holds no images"]),
    ],
)
def test_bad_cifar10_batch_is_named_before_training(tmp_path, capsys, no_training, edit, words):
    _fake_cifar(tmp_path, edit)
    code, out, err = _train(
        capsys, "--data", "cifar10", "--data-dir", tmp_path, "--model", "resnet8", "--batch-size", "8"
    )
    _assert_one_line_error(code, out, err, *words)


@pytest.mark.parametrize("model", ["digits-mlp", "digits-cnn"])
def test_model_that_does_not_take_the_data_is_refused_before_training(tmp_path, capsys, no_training, model):
    _fake_cifar(tmp_path)
    code, out, err = _train(capsys, "--data", "cifar10", "--data-dir", tmp_path, "--model", model, "--batch-size", "8")
    _assert_one_line_error(code, out, err, f"--model {model}", "(3, 32, 32)")


@pytest.mark.parametrize("where", ["file", "absent", "empty"])
def test_bad_data_dir_is_one_line(tmp_path, capsys, no_training, where):
    path = tmp_path / where
    if where == "file":
        path.write_text("x")
    elif where == "empty":
        path.mkdir()
    code, out, err = _train(capsys, "--data", "cifar10", "--data-dir", path)
    _assert_one_line_error(code, out, err, "--data-dir", "data_batch_1")


# --------------------------------------------------------------------------- outputs
def test_save_to_an_existing_file_is_refused_before_training(tmp_path, capsys, no_training):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    code, out, err = _train(capsys, "--save", target)
    _assert_one_line_error(code, out, err, "--save", "existing file")
    assert target.read_text() == "keep me"


def test_save_where_a_checkpoint_name_is_a_folder_is_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "sgd.pt").mkdir()  # os.replace onto it would fail after an epoch
    code, out, err = _train(capsys, "--optimizer", "sgd", "--save", tmp_path)
    _assert_one_line_error(code, out, err, "--save", "sgd.pt there is a folder")


def test_save_below_a_file_is_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "f").write_text("")
    code, out, err = _train(capsys, "--save", tmp_path / "f" / "run")
    _assert_one_line_error(code, out, err, "--save", "cannot write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_save_to_a_read_only_folder_is_refused_before_training(tmp_path, capsys, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, out, err = _train(capsys, "--save", folder)
    finally:
        folder.chmod(0o700)
    _assert_one_line_error(code, out, err, "--save", "cannot write")


@pytest.mark.parametrize(
    "name,words",
    [
        ("f/curves.png", ["--plot", "cannot write"]),  # below a regular file
        ("curves", ["--plot", ".png"]),  # matplotlib would write curves.png
        ("curves.xyz", ["--plot", ".png"]),  # matplotlib fails after training
        (".", ["--plot", "is a folder"]),
    ],
)
def test_plot_that_cannot_be_written_is_refused_before_training(tmp_path, capsys, no_training, name, words):
    (tmp_path / "f").write_text("")
    argv = list(FAST)
    argv[argv.index("--plot") + 1] = str(tmp_path / name)
    code, out, err = _cli(capsys, "train", *argv)
    _assert_one_line_error(code, out, err, *words)


def test_failed_write_of_a_checkpoint_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    def disk_full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train_module, "save_checkpoint", disk_full)
    code, out, err = _train(capsys, "--optimizer", "sgd", "--save", tmp_path)
    _assert_one_line_error(code, out, err, "No space left on device", "sgd.pt", exit_code=1)


def test_diverged_run_is_one_line_exit_1(capsys):
    code, out, err = _train(capsys, "--optimizer", "sgd", "--lr-sgd", "1e6")
    _assert_one_line_error(code, out, err, "training loss became", "--lr-sgd", exit_code=1)


# --------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A one-epoch SGD checkpoint of a two-epoch schedule (sgd.pt), made once."""
    folder = tmp_path_factory.mktemp("saved")
    assert (
        main(["train", *FAST, "--optimizer", "sgd", "--epochs", "2", "--stop-after", "1", "--save", str(folder)]) == 0
    )
    return folder / "sgd.pt"


def _resume_flags(folder):
    return ["--optimizer", "sgd", "--epochs", "2", "--resume", str(folder)]


def test_resume_from_an_empty_checkpoint_is_one_line(tmp_path, capsys, no_training):
    (tmp_path / "kfac.pt").write_bytes(b"")
    code, out, err = _train(capsys, "--optimizer", "kfac", "--resume", tmp_path)
    _assert_one_line_error(code, out, err, "kfac.pt", "empty (0 bytes)")
    assert (tmp_path / "kfac.pt").read_bytes() == b""


def _edit(state, key, value):
    state = dict(state)
    if value is None:
        del state[key]
    else:
        state[key] = value(state[key]) if callable(value) else value
    return state


@pytest.mark.parametrize(
    "key,value,words,trains",
    [
        ("history", None, ["lacks ['history']"], False),
        ("rng", lambda r: {**r, "torch": torch.zeros(7, dtype=torch.uint8)}, ["rng cannot be restored"], False),
        ("rng", lambda r: {k: v for k, v in r.items() if k != "numpy"}, ["rng cannot be restored"], False),
        ("epoch", 5, ["history holds 1 epochs, but epoch is 5"], False),
        ("config", "sgd", ["config is a str"], False),
        ("model", lambda m: {k: v[:1] for k, v in m.items()}, ["does not fit"], True),
        ("optimizer", lambda o: {**o, "param_groups": []}, ["does not fit"], True),
        ("optimizer", lambda o: {**o, "param_groups": "x"}, ["does not fit"], True),
        ("optimizer", lambda o: {**o, "state": 5}, ["does not fit"], True),
        ("history", lambda h: [{k: v for k, v in h[0].items() if k != "test_accuracy"}], ["history record 0"], False),
        ("history", lambda h: [{**h[0], "train_loss": "low"}], ["not a number"], False),
    ],
)
def test_hand_edited_checkpoint_is_refused_and_kept(
    saved_run, tmp_path, capsys, monkeypatch, key, value, words, trains
):
    if not trains:  # known from the file alone: refused before any run starts
        monkeypatch.setattr(train_module, "_train_run", lambda *a, **k: pytest.fail("trained"))
    path = tmp_path / "sgd.pt"
    torch.save(_edit(torch.load(saved_run, weights_only=True), key, value), path)
    before = path.read_bytes()
    code, out, err = _train(capsys, *_resume_flags(tmp_path), "--save", tmp_path)
    _assert_one_line_error(code, out, err, *words)
    assert path.read_bytes() == before


def test_resume_removes_the_leftover_of_a_killed_save(saved_run, tmp_path, capsys):
    (tmp_path / "sgd.pt").write_bytes(saved_run.read_bytes())
    stale = tmp_path / ".tmp-sgd.pt-x1y2z3"  # the name a killed save left before
    stale.write_bytes(b"half a checkpoint")
    code, out, err = _train(capsys, *_resume_flags(tmp_path))
    assert code == 0, err
    assert json.loads(out)["runs"]["sgd"]["epochs"] == 2
    assert not stale.exists()


# --------------------------------------------------------------------------- bugs keep tracebacks
def test_a_genuine_bug_keeps_its_traceback(monkeypatch):
    # Only errors a user can cause become one line; a TypeError is ours to fix.
    def bug(*args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(train_module, "_run_in_world", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["train", *FAST])


def test_unknown_command_is_one_line(capsys):
    code, out, err = _cli(capsys, "trian")
    _assert_one_line_error(code, out, err, "unknown command 'trian'")


# --------------------------------------------------------------------------- interrupts
@pytest.mark.parametrize("save", [True, False])
def test_keyboard_interrupt_is_one_line_exit_130(tmp_path, capsys, monkeypatch, save):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_train_run", interrupted)
    flags = ["--save", str(tmp_path)] if save else []
    code, out, err = _train(capsys, *flags)
    want = (
        f"kfac-ext train: interrupted before the first checkpoint was written to {tmp_path}"
        if save
        else "kfac-ext train: interrupted"
    )
    assert (code, out, err.strip()) == (130, "", want)


def _python(code, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs
    )


@pytest.mark.timeout(240)
def test_sigint_prints_how_to_resume_and_the_resume_works(tmp_path):
    """A real Ctrl-C after the first checkpoint: one line, exit 130, the checkpoint resumes.

    K-FAC, whose lagged eigendecompositions run on a background thread: the process
    must still leave at once. (Without --save, the in-process test above.)
    """
    optimizer = "kfac"
    argv = ["train", *FAST, "--optimizer", optimizer, "--epochs", "10000", "--save", str(tmp_path)]
    proc = _python(f"import sys; from kfac_ext.cli import main; sys.exit(main({argv!r}))")
    checkpoint = tmp_path / f"{optimizer}.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert out == "" and err.strip() == f"kfac-ext train: interrupted; resume with --resume {tmp_path}"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    epoch = load_checkpoint(checkpoint)["epoch"]
    resumed = main(
        [
            "train",
            *FAST,
            "--optimizer",
            optimizer,
            "--epochs",
            "10000",
            "--resume",
            str(tmp_path),
            "--stop-after",
            str(epoch + 1),
        ]
    )
    assert resumed == 0


@pytest.mark.timeout(120)
def test_save_killed_mid_write_leaves_a_temporary_the_next_save_removes(tmp_path):
    """SIGKILL while the checkpoint is being written (fsync held open), then save again."""
    path = tmp_path / "kfac.pt"
    here = os.path.dirname(os.path.abspath(__file__))
    proc = _python(
        "import sys, time\n"
        f"sys.path.insert(0, {here!r})\n"
        "from kfac_ext.app import checkpoint as c\n"
        "from test_checkpoint import _state\n"
        "def stuck(fd):\n"
        "    print('writing', flush=True); time.sleep(120)\n"
        "c.os.fsync = stuck\n"
        f"c.save_checkpoint({str(path)!r}, _state())\n"
    )
    assert proc.stdout.readline().strip() == "writing", proc.communicate()[1][-2000:]
    proc.kill()
    proc.communicate(timeout=30)
    left = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-kfac.pt-")]
    assert len(left) == 1 and not path.exists()
    from test_checkpoint import _state

    from kfac_ext.app.checkpoint import save_checkpoint

    save_checkpoint(path, _state())
    assert os.listdir(tmp_path) == ["kfac.pt"]
    assert load_checkpoint(path)["format"] == FORMAT


# --------------------------------------------------------------------------- bench
BENCH_BAD = [
    (["--workers", "0"], "--workers"),
    (["--workers", "8,-16"], "--workers"),
    (["--workers", "8,a"], "--workers"),
    (["--workers", ""], "--workers"),
    (["--workers", str(10**12)], "--workers"),  # was a MemoryError after measuring
    (["--eigh-sizes", "0"], "--eigh-sizes"),
    (["--eigh-sizes", "64,100000"], "--eigh-sizes"),
    (["--alpha", "-1"], "--alpha"),
    (["--alpha", "nan"], "--alpha"),
    (["--bandwidth", "0"], "--bandwidth"),
    (["--bandwidth", "inf"], "--bandwidth"),
    (["--factor-update-steps", "0"], "--factor-update-steps"),
    (["--inv-update-steps", "-1"], "--inv-update-steps"),
    (["--bucket-cap-mb", "0"], "--bucket-cap-mb"),
    (["--bucket-cap-mb", "nan"], "--bucket-cap-mb"),
    (["--plot", "/etc/passwd/x.png"], "--plot"),
    (["--plot", "scaling"], "--plot"),
]


@pytest.mark.parametrize("argv,flag", BENCH_BAD)
def test_bench_bad_value_is_refused_before_measuring(capsys, monkeypatch, argv, flag):
    from kfac_ext.app import bench

    monkeypatch.setattr(bench, "measure_profile", lambda *a, **k: pytest.fail("measured before checking the arguments"))
    monkeypatch.setattr(
        bench, "workload_of", lambda *a, **k: pytest.fail("built the model before checking the arguments")
    )
    code, out, err = _cli(capsys, "bench", "scaling", *argv)
    _assert_one_line_error(code, out, err, flag)


@pytest.mark.timeout(120)
def test_output_into_a_closed_pipe_exits_quietly_141():
    """`kfac-ext bench scaling | head -0`: no 'Broken pipe' error line, no traceback."""
    proc = _python(
        "import sys; from kfac_ext.cli import main; sys.exit(main("
        "['bench', 'scaling', '--workers', '8', '--eigh-sizes', '16,32', '--plot', '']))"
    )
    proc.stdout.close()  # the reader leaves before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=100) == 141 and err == "", err


# --------------------------------------------------------------------------- issue 26
def _history(out):
    return [
        (r["epoch"], r["train_loss"], r["test_loss"], r["test_accuracy"])
        for r in json.loads(out)["runs"]["kfac"]["history"]
    ]


@pytest.mark.parametrize("flags", [["--adaptive-damping", "1"], ["--auto-step", "--auto-step-interval", "1"]])
def test_resume_with_adaptive_damping_or_auto_step_is_bit_identical(tmp_path, capsys, flags):
    """Every step measures (T=1 / AutoStep's ratio), so the checkpoint lands mid-measurement."""
    argv = ["--optimizer", "kfac", "--epochs", "2", "--decay-epochs", "2", *flags]
    code, full, err = _train(capsys, *argv)
    assert code == 0, err
    code, _, err = _train(capsys, *argv, "--stop-after", "1", "--save", tmp_path)
    assert code == 0, err
    saved = torch.load(tmp_path / "kfac.pt", weights_only=True)
    if "--adaptive-damping" in flags:
        assert saved["preconditioner"]["adaptive_damping"]["pending"] is not None
        assert saved["pending_batch"]["x"].shape[0] == 128
    code, resumed, err = _train(capsys, *argv, "--resume", tmp_path)
    assert code == 0, err
    assert _history(resumed) == _history(full)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--optimizer", "adamw", "--auto-step"], "--auto-step"),
        (["--optimizer", "sgd", "--adaptive-damping", "5"], "--adaptive-damping"),
        (["--task", "autoencoder", "--target-accuracy", "0.5"], "--target-accuracy"),
    ],
)
def test_flags_the_run_would_ignore_are_refused(capsys, no_training, argv, flag):
    code, out, err = _train(capsys, *argv)
    _assert_one_line_error(code, out, err, flag)


def test_resume_with_another_task_names_the_task(saved_run, tmp_path, capsys, no_training):
    (tmp_path / "sgd.pt").write_bytes(saved_run.read_bytes())
    code, out, err = _train(capsys, *_resume_flags(tmp_path), "--task", "autoencoder")
    _assert_one_line_error(code, out, err, "task: checkpoint 'classify' vs now 'autoencoder'")
    assert "damaged" not in err


def test_cifar10_auto_step_trains_a_batchnorm_resnet(tmp_path, capsys):
    from test_data import _write_fake_cifar

    _write_fake_cifar(str(tmp_path), n_per_batch=8)
    code, out, err = _train(
        capsys,
        "--data",
        "cifar10",
        "--data-dir",
        tmp_path,
        "--model",
        "resnet8",
        "--optimizer",
        "kfac",
        "--auto-step",
        "--batch-size",
        "20",
    )
    assert code == 0, err
    assert json.loads(out)["runs"]["kfac"]["steps"] == 2


@pytest.mark.timeout(240)
def test_sigterm_stops_like_ctrl_c_with_exit_143(tmp_path):
    """A scheduler's SIGTERM after the first checkpoint: the resume hint, exit 143, no
    temporary left, and the checkpoint resumes."""
    argv = ["train", *FAST, "--optimizer", "sgd", "--epochs", "10000", "--save", str(tmp_path)]
    proc = _python(f"import sys; from kfac_ext.cli import main; sys.exit(main({argv!r}))")
    checkpoint = tmp_path / "sgd.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert out == "" and err.strip() == f"kfac-ext train: interrupted; resume with --resume {tmp_path}"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert load_checkpoint(checkpoint)["epoch"] >= 1
