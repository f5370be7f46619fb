"""kfac_ext.app.checkpoint: round trip, RNG restore, atomic writes, clear errors."""
import os
import random

import numpy as np
import pytest
import torch

from kfac_ext.app import checkpoint as ckpt
from kfac_ext.app.checkpoint import (FORMAT, CheckpointError, capture_rng_state, load_checkpoint,
                                 restore_rng_state, save_checkpoint)


def _state(config=None, value=1.0):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return dict(format=FORMAT, config=config or {"lr": 0.1, "seed": 0}, epoch=3, step=30,
                model=model.state_dict(), optimizer=opt.state_dict(), preconditioner=None,
                rng=capture_rng_state(), history=[{"epoch": 1, "test_accuracy": 0.5}])


def test_round_trip_keeps_every_entry(tmp_path):
    path = tmp_path / "run" / "sgd.pt"   # the folder is created
    state = _state(value=2.5)
    save_checkpoint(path, state)
    back = load_checkpoint(path, state["config"])
    assert back["epoch"] == 3 and back["step"] == 30 and back["history"] == state["history"]
    assert torch.equal(back["model"]["weight"], torch.full((2, 3), 2.5))
    assert back["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert os.listdir(tmp_path / "run") == ["sgd.pt"]   # no temp file left behind


def test_rng_restore_reproduces_torch_numpy_python_draws():
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    saved = capture_rng_state()
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)],
             np.random.randn(1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(saved)
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)],
             np.random.randn(1))
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
