"""kfac_ext.app.checkpoint: round trip, RNG restore, atomic writes, clear errors."""

import os
import random

import numpy as np
import pytest
import torch

from kfac_ext.app import checkpoint as ckpt
from kfac_ext.app.checkpoint import (
    FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _state(config=None, value=1.0):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return dict(
        format=FORMAT,
        config=config or {"lr": 0.1, "seed": 0},
        epoch=3,
        step=30,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        preconditioner=None,
        rng=capture_rng_state(),
        history=[dict(epoch=e, train_loss=1.0 / e, train_time_s=0.1 * e, lr=0.1, test_accuracy=0.5) for e in (1, 2, 3)],
        step_times=[0.01] * 30,
        train_time_s=0.3,
        wall_s=0.5,
    )


def test_round_trip_keeps_every_entry(tmp_path):
    path = tmp_path / "run" / "sgd.pt"  # the folder is created
    state = _state(value=2.5)
    save_checkpoint(path, state)
    back = load_checkpoint(path, state["config"])
    assert back["epoch"] == 3 and back["step"] == 30 and back["history"] == state["history"]
    assert torch.equal(back["model"]["weight"], torch.full((2, 3), 2.5))
    assert back["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert os.listdir(tmp_path / "run") == ["sgd.pt"]  # no temp file left behind


def test_rng_restore_reproduces_torch_numpy_python_draws():
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    saved = capture_rng_state()
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(saved)
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.randn(1))
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert np.array_equal(first[3], again[3])


def test_rng_state_survives_a_file(tmp_path):
    torch.manual_seed(5)
    state = _state()
    save_checkpoint(tmp_path / "a.pt", state)
    want = torch.rand(3)
    torch.manual_seed(6)
    restore_rng_state(load_checkpoint(tmp_path / "a.pt")["rng"])
    assert torch.equal(torch.rand(3), want)


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "kfac.pt"
    save_checkpoint(path, _state(value=1.0))
    before = path.read_bytes()

    def crash_halfway(obj, f, *args, **kwargs):
        f.write(b"\x80\x02partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(value=9.0))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["kfac.pt"]


def test_corrupt_truncated_and_foreign_files_raise_clear_errors(tmp_path):
    path = tmp_path / "sgd.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="sgd.pt"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path)
    incomplete = _state()
    del incomplete["optimizer"]
    torch.save(incomplete, path)
    with pytest.raises(CheckpointError, match="optimizer"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_mismatched_configuration_names_each_difference(tmp_path):
    path = tmp_path / "sgd.pt"
    save_checkpoint(path, _state(config={"lr": 0.1, "seed": 0, "model": "digits-cnn"}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, {"lr": 0.2, "seed": 0, "model": "digits-mlp"})
    message = str(info.value)
    assert "lr: checkpoint 0.1 vs now 0.2" in message and "model" in message
    assert "seed" not in message


def test_save_refuses_an_incomplete_state(tmp_path):
    with pytest.raises(ValueError, match="rng"):
        save_checkpoint(tmp_path / "x.pt", {k: v for k, v in _state().items() if k != "rng"})
    assert not os.listdir(tmp_path)


def test_empty_file_is_refused_by_name(tmp_path):
    path = tmp_path / "kfac.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"kfac.pt is empty \(0 bytes\)"):
        load_checkpoint(path)
    assert path.read_bytes() == b""


def _edited(state, key, value):
    state = dict(state)
    if value is _DELETE:
        del state[key]
    else:
        state[key] = value
    return state


_DELETE = object()
_BAD_RNG = {"torch": torch.zeros(5, dtype=torch.uint8), "numpy": {}, "python": {}}


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("history", _DELETE, "lacks \\['history'\\]"),
        ("rng", _BAD_RNG, "rng cannot be restored"),
        ("rng", [1, 2], "rng is a list"),
        ("history", {"epoch": 1}, "history is not a list"),
        ("history", [{"epoch": 1}], "history holds 1 epochs, but epoch is 3"),
        ("history", [{"epoch": 1, "lr": 0.1}] * 3, "history record 0 lacks \\['train_loss'"),
        (
            "history",
            [dict(epoch=e, train_loss=1.0, train_time_s=1.0, lr=0.1) for e in (1, 1, 3)],
            "history record 1 is epoch 1, not 2",
        ),
        (
            "history",
            [dict(epoch=e, train_loss="low", train_time_s=1.0, lr=0.1) for e in (1, 2, 3)],
            "history record 0 holds a value that is not a number",
        ),
        ("epoch", -1, "epoch is -1"),
        ("step", "30", "step is '30'"),
        ("config", [("lr", 0.1)], "config is a list"),
        ("model", None, "model is a NoneType"),
        ("step_times", [0.1, float("nan")], "step_times"),
        ("train_time_s", -1.0, "train_time_s is -1.0"),
        ("preconditioner", "x", "preconditioner is neither"),
    ],
)
def test_hand_edited_checkpoint_names_what_is_wrong_and_stays_untouched(tmp_path, key, value, message):
    path = tmp_path / "sgd.pt"
    torch.save(_edited(_state(), key, value), path)
    before = path.read_bytes()
    rng_before = torch.get_rng_state()
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path, {"lr": 0.1, "seed": 0})
    assert "sgd.pt" in str(info.value)
    assert path.read_bytes() == before
    assert torch.equal(torch.get_rng_state(), rng_before)  # a trial restore is undone


def test_stale_temporary_of_a_killed_save_is_removed_by_the_next_save_or_load(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "kfac.pt"
    save_checkpoint(path, _state())
    host = ckpt._HOST
    # A writer that died (its pid is gone), an older-style name and an interrupted save
    # of this very process: all stale. A live writer's file and other runs' files stay.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = [
        f".tmp-kfac.pt-{host}-{dead.stdout.strip()}-abc",
        ".tmp-kfac.pt-k2j3h4",
        f".tmp-kfac.pt-{host}-{os.getpid()}-zzz",
    ]
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        kept = [f".tmp-kfac.pt-{host}-{live.pid}-live", ".tmp-sgd.pt-k2j3h4", ".tmp-kfac.pt-otherhost-1-x"]
        for name in stale + kept:
            (tmp_path / name).write_bytes(b"partial")
        save_checkpoint(path, _state())
        assert sorted(os.listdir(tmp_path)) == sorted(kept + ["kfac.pt"])
        for name in stale:
            (tmp_path / name).write_bytes(b"partial")
        load_checkpoint(path)
        assert sorted(os.listdir(tmp_path)) == sorted(kept + ["kfac.pt"])
        live.kill()


def test_resume_hint_says_whether_there_is_anything_to_resume(tmp_path):
    assert ckpt.resume_hint(None) == "interrupted"
    assert "before the first checkpoint" in ckpt.resume_hint(str(tmp_path))
    save_checkpoint(tmp_path / "sgd.pt", _state())
    assert ckpt.resume_hint(str(tmp_path)) == f"interrupted; resume with --resume {tmp_path}"


def test_ctrl_c_during_a_save_lands_after_it_with_the_checkpoint_complete(tmp_path, monkeypatch):
    import signal

    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the write
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", interrupted_save)
    path = tmp_path / "kfac.pt"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(value=4.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["weight"], torch.full((2, 3), 4.0))
    assert os.listdir(tmp_path) == ["kfac.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_history_records_must_hold_what_the_caller_reads_back(tmp_path):
    path = tmp_path / "sgd.pt"
    save_checkpoint(path, _state())
    assert load_checkpoint(path, record_keys=("test_accuracy",))["epoch"] == 3
    with pytest.raises(CheckpointError, match=r"record 0 lacks \['train_eval_loss'\]"):
        load_checkpoint(path, record_keys=("train_eval_loss",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root deletes in read-only folders")
def test_a_checkpoint_in_a_read_only_folder_loads_despite_a_stale_temporary(tmp_path):
    save_checkpoint(tmp_path / "kfac.pt", _state())
    (tmp_path / ".tmp-kfac.pt-k2j3h4").write_bytes(b"partial")
    tmp_path.chmod(0o500)
    try:
        assert load_checkpoint(tmp_path / "kfac.pt")["epoch"] == 3
    finally:
        tmp_path.chmod(0o700)


def test_stale_temporary_that_cannot_be_removed_does_not_stop_a_load(tmp_path, monkeypatch):
    # What a read-only folder does (root, who runs these tests in CI, may delete anywhere).
    save_checkpoint(tmp_path / "kfac.pt", _state())
    (tmp_path / ".tmp-kfac.pt-k2j3h4").write_bytes(b"partial")

    def read_only(path):
        raise OSError(30, "Read-only file system", path)

    monkeypatch.setattr(ckpt.os, "unlink", read_only)
    assert load_checkpoint(tmp_path / "kfac.pt")["epoch"] == 3


def test_sigterm_during_a_save_lands_after_it_as_terminated(tmp_path, monkeypatch):
    """A scheduler's SIGTERM is a polite stop: the save finishes, then Terminated (exit 143)."""
    import signal

    real_save = torch.save

    def terminated_save(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", terminated_save)
    path = tmp_path / "kfac.pt"
    with pytest.raises(ckpt.Terminated) as caught:
        save_checkpoint(path, _state(value=5.0))
    monkeypatch.undo()
    assert caught.value.exit_code == 143
    assert torch.equal(load_checkpoint(path)["model"]["weight"], torch.full((2, 3), 5.0))
    assert os.listdir(tmp_path) == ["kfac.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_as_interrupt_raises_terminated_and_restores_the_handler():
    import signal

    with pytest.raises(ckpt.Terminated):
        with ckpt.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_another_task_is_named_not_called_damaged(tmp_path):
    path = tmp_path / "kfac.pt"
    save_checkpoint(path, _state())
    saved = load_checkpoint(path)["config"]
    with pytest.raises(CheckpointError, match="task: checkpoint 'classify' vs now 'autoencoder'"):
        load_checkpoint(path, dict(saved, task="autoencoder"), record_keys=("train_eval_loss",))
