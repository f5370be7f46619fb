"""`kfac-ext train --task lm`: the standard-library corpus, its fixed split, the windows,
the GPT model, K-FAC on its Linear layers, and the CLI end to end on a small text."""

import json
import math
import os

import pytest
import torch

from kfac_ext import KFACPreconditioner
from kfac_ext.app import lm_data
from kfac_ext.app.lm_data import load_text_corpus, stdlib_dir
from kfac_ext.app.lm_model import char_gpt
from kfac_ext.app.lm_task import LanguageModel
from kfac_ext.app.models import build_model
from kfac_ext.app.tasks import make_task
from kfac_ext.cli import main
from kfac_ext.comm import LocalComm


def _write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(text)
    return path


def test_corpus_split_is_per_file_and_fixed(tmp_path):
    a, b = bytes(range(100)), b"x" * 50
    _write(tmp_path, "a.py", a)
    _write(tmp_path, "b.py", b)
    c = load_text_corpus(("a.py", "missing.py", "b.py"), folder=str(tmp_path))
    assert c.files == ("a.py", "b.py")  # a missing file is left out
    assert bytes(c.train.tolist()) == a[:90] + b[:45]  # first 90 % of each file
    assert bytes(c.val.tolist()) == a[90:] + b[45:]  # last 10 %: never trained on
    again = load_text_corpus(("a.py", "b.py"), folder=str(tmp_path))
    assert torch.equal(again.train, c.train) and torch.equal(again.val, c.val)


def test_corpus_without_any_file_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="ships without its .py"):
        load_text_corpus(("nothere.py",), folder=str(tmp_path))
    with pytest.raises(ValueError, match="val_fraction"):
        load_text_corpus(folder=str(tmp_path), val_fraction=1.0)


def test_default_corpus_is_this_pythons_standard_library():
    c = load_text_corpus()
    assert c.folder == stdlib_dir() and len(c.files) >= 4
    assert len(c.train) > 200_000 and 0.09 < len(c.val) / (len(c.train) + len(c.val)) < 0.11


def _small_task(tmp_path, context=8):
    text = ("def f(x):\n    return x + 1\n" * 40).encode()
    _write(tmp_path, "t.py", text)
    return LanguageModel(load_text_corpus(("t.py",), folder=str(tmp_path)), context=context, val_windows=4)


def test_windows_are_next_byte_pairs_inside_the_text(tmp_path):
    task = _small_task(tmp_path)
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(task.n_train)  # every window, the last one included
    x, y = task.train_batch(idx, gen)
    assert x.shape == y.shape == (task.n_train, 8) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # the target is the input shifted by one
    starts = [bytes(task.train_text.tolist()).find(bytes(row.tolist())) for row in x[:3]]
    assert all(s >= 0 for s in starts)
    # The same generator state gives the same batch (exact resume); another gives others.
    x2, _ = task.train_batch(idx, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    assert task.val_x.shape == (4, 8) and torch.equal(task.val_x[:, 1:], task.val_y[:, :-1])


def test_validation_loss_of_a_uniform_model_is_log_vocab(tmp_path):
    task = _small_task(tmp_path)

    class Uniform(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, 256)

    assert task.validation_loss(Uniform()) == pytest.approx(math.log(256), rel=1e-6)
    rec = task.evaluate(Uniform(), 0, 1, torch.device("cpu"), lambda v: v)
    assert rec["val_loss"] == pytest.approx(math.log(256), rel=1e-6)
    assert task.reached(dict(val_loss=2.0), 2.0) and not task.reached(dict(val_loss=2.1), 2.0)


def test_char_gpt_is_causal_and_checks_its_context():
    torch.manual_seed(0)
    model = build_model("char-gpt", 256, 16)
    idx = torch.randint(0, 256, (2, 16))
    out = model(idx)
    assert out.shape == (2, 16, 256)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    out2 = model(changed)
    assert torch.allclose(out[:, :10], out2[:, :10], atol=1e-6)  # no look-ahead
    assert not torch.allclose(out[:, 10:], out2[:, 10:])
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of n_heads"):
        char_gpt(d_model=30, n_heads=4)


def test_kfac_preconditions_every_linear_and_embedding_layer_and_skips_the_rest():
    torch.manual_seed(0)
    model = char_gpt(context=8, n_layers=2)
    pre = KFACPreconditioner(model, comm=LocalComm(), compute_method="inverse", damping=0.03)
    kinds = (torch.nn.Linear, torch.nn.Embedding)  # LayerNorm is left to the optimizer
    covered = {n for n, m in model.named_modules() if isinstance(m, kinds)}
    assert {layer.name for layer in pre.layers} == covered and len(covered) == 11
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    idx = torch.randint(0, 256, (4, 9))
    losses = []
    for _ in range(5):
        opt.zero_grad()
        out = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, 256), idx[:, 1:].reshape(-1))
        loss.backward()
        pre.step()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    pre.remove_hooks()


def test_make_task_lm_ignores_the_image_data():
    task = make_task("lm", None)
    assert task.metric == "val_loss" and not task.higher_is_better
    assert task.model_args == (256, task.context) and task.tokens_per_sample == task.context


def test_train_task_lm_end_to_end(capsys, monkeypatch):
    # A short text (textwrap.py alone) so that an epoch is four steps.
    monkeypatch.setattr(lm_data, "CORPUS_FILES", ("textwrap.py",))
    code = main(
        [
            "train",
            "--task",
            "lm",
            "--optimizer",
            "adamw,kfac",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--target-loss",
            "10",
            "--json",
            "--plot",
            "",
            "--threads",
            "1",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "textwrap.py" in out.err and "tokens/s" in out.err  # the log and the bar
    res = json.loads(out.out)
    assert res["task"] == "lm" and res["model"] == "char-gpt" and res["target_loss"] == 10
    for name in ("adamw", "kfac"):
        run = res["runs"][name]
        assert run["epochs_to_target"] == 1 and run["steps"] == run["epochs"] * 4
        assert run["final_val_loss"] < math.log(256) + 0.5
    # The task's defaults are its sweep's best: AdamW's betas, K-FAC's G per loss term.
    assert res["runs"]["adamw"]["config"]["betas"] == [0.8, 0.95]
    kfac_cfg = res["runs"]["kfac"]["config"]
    assert (kfac_cfg["per_example_g"], kfac_cfg["factor_decay"]) == (True, 0.5)


def test_per_example_g_scales_g_by_the_loss_terms_squared():
    """An LM's loss is a mean over batch x context bytes: G is scaled by that count squared,
    and the adaptive damping's curvature scale divides it out again."""
    import argparse

    from kfac_ext.app import train

    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
    sched = argparse.Namespace(factor_update_steps=1, inv_update_steps=1, lr=lambda step: 0.1)
    a = argparse.Namespace(
        per_example_g=True,
        batch_size=8,
        damping=0.03,
        auto_step=False,
        adaptive_damping=2,
        factor_init="identity",
        factor_decay=0.5,
        kl_clip=0.001,
        inv_lag_steps=0,
        compute_method="inverse",
        skip_layers=(),
        relative_damping=False,
    )
    pre, adaptive = train._make_preconditioner(model, sched, a, terms_per_sample=64)
    assert pre.g_scale == float(8 * 64) ** 2 and adaptive.curvature_scale == 1.0
    pre.remove_hooks()
    a.per_example_g = False
    pre, adaptive = train._make_preconditioner(model, sched, a, terms_per_sample=64)
    assert pre.g_scale == 1.0 and adaptive.curvature_scale == float(8 * 64) ** 2
    pre.remove_hooks()
