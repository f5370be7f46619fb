"""kfac-pytorch's own example programs with ``kfac`` bound to ``kfac_ext``.

The programs come from third_party/kfac-pytorch (see ``_kfac_pytorch``; these
tests skip without it). Each runs twice on the same synthetic data, once with
kfac-pytorch and once with its module-level ``kfac`` replaced by ``kfac_ext``
(what ``import kfac_ext as kfac`` gives), and the gradients the optimizer
receives, i.e. the preconditioned ones, must agree at every step:
- the language-model script: its whole ``main()`` (a stand-in dataset);
- the CIFAR-10 ResNet script: its ``parse_args``, ``get_optimizer`` (SGD,
  the preconditioner with kfac's enums, the ``LambdaParamScheduler``) and
  ``engine.train`` / ``engine.test`` / ``save_checkpoint``, in the loop of its
  ``main()`` (which itself needs CUDA: its DDP gets ``device_ids``), with the
  schedulers decaying damping and stretching intervals; then resumed from the
  checkpoint it saved, which must continue bit for bit;
- the ImageNet script: ``get_optimizer`` under its own default arguments.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
from _kfac_pytorch import example, kfac_pytorch, parse_args
from dist_utils import free_port
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import kfac_ext

pytestmark = pytest.mark.slow
# float32 runs of two implementations: the preconditioned gradients differ by
# rounding (eigh, GEMM order), which may grow as the weights drift apart; measured
# relative to each gradient's largest entry (2.4e-6 at most in the language model).
TOL = 1e-4


@pytest.fixture
def kfac():
    return kfac_pytorch()


@contextlib.contextmanager
def _single_rank_env(monkeypatch):
    """What torchrun sets for one process; the process group is destroyed after."""
    for key, value in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    ).items():
        monkeypatch.setenv(key, value)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def _process_group(monkeypatch):
    with _single_rank_env(monkeypatch):
        dist.init_process_group("gloo", init_method="env://")
        yield


def _bind(monkeypatch, library, *modules):
    """Give each example module ``library`` as its ``kfac``."""
    for m in modules:
        monkeypatch.setattr(m, "kfac", library)


def _record_optimizer_grads(monkeypatch):
    """Every optimizer step's gradients (each parameter's), as the optimizer sees them."""
    steps = []
    original = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        steps.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return steps


def _assert_same_steps(ours, theirs, tol=TOL):
    assert len(ours) == len(theirs) and ours
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            err = (x - y).abs().max().item() / max(y.abs().max().item(), 1e-30)
            assert err <= tol, f"step {k}: preconditioned gradients differ by {err:.2e} (relative to the largest entry)"


def _loader(x, y, batch_size, shuffle):
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=shuffle, seed=0)
    return sampler, DataLoader(data, batch_size=batch_size, sampler=sampler)


# ------------------------------------------------------- language model ----


def _fake_text(args, ntokens=23):
    """A stand-in for examples.language.dataset.get_dataset: random token streams
    laid out as its loaders give them ([seq_len, batch] inputs, next-token targets)."""
    from types import SimpleNamespace

    def split(n, seed):
        gen = torch.Generator().manual_seed(seed)
        stream = torch.randint(0, ntokens, (n, args.batch_size, args.seq_len + 1), generator=gen)
        data = TensorDataset(stream[..., :-1], stream[..., 1:])
        sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
        # one item per batch, [seq_len, batch] as the language example expects
        loader = DataLoader(
            data,
            batch_size=None,
            sampler=sampler,
            collate_fn=lambda item: (item[0].T.contiguous(), item[1].T.contiguous()),
        )
        return SimpleNamespace(sampler=sampler, loader=loader)

    def get_dataset(*_, **__):
        return SimpleNamespace(train=split(4, 1), val=split(2, 2), test=split(2, 3)), list(range(ntokens))

    return get_dataset


LM_ARGV = [
    "--kfac",
    "--backend",
    "gloo",
    "--no-cuda",
    "--embedding-dim",
    "16",
    "--hidden-dim",
    "32",
    "--attention-heads",
    "2",
    "--layers",
    "2",
    "--seq-len",
    "8",
    "--batch-size",
    "4",
    "--epochs",
    "3",
    "--inv-update-steps",
    "3",
    "--lr",
    "0.5",
]


def _run_language_model(library):
    script = example("torch_language_model")
    engine = example("language.engine")
    with pytest.MonkeyPatch.context() as mp, _single_rank_env(mp):
        _bind(mp, library, script, engine)
        args = parse_args(script, LM_ARGV)
        mp.setattr(script, "get_dataset", _fake_text(args))
        mp.setattr(script.collect_env, "get_pretty_env_info", lambda: "")
        steps = _record_optimizer_grads(mp)
        torch.manual_seed(0)
        assert script.main(LM_ARGV) == 0
    return steps


def test_language_model_example_gives_kfac_pytorchs_gradients(kfac):
    theirs = _run_language_model(kfac)
    ours = _run_language_model(kfac_ext)
    assert len(ours) == 12  # 3 epochs of 4 batches
    _assert_same_steps(ours, theirs)


# -------------------------------------------------------------- CIFAR-10 ----

CIFAR_ARGV = [
    "--model",
    "resnet20",
    "--batch-size",
    "8",
    "--val-batch-size",
    "8",
    "--epochs",
    "4",
    "--kfac-inv-update-steps",
    "2",
    "--kfac-update-steps-alpha",
    "2",
    "--kfac-update-steps-decay",
    "2",
    "3",
    "--kfac-damping-decay",
    "2",
    "3",
    "--warmup-epochs",
    "1",
    "--lr-decay",
    "3",
    "--checkpoint-freq",
    "2",
]


def _vision_args(script, log_dir, argv):
    """A vision script's own arguments from ``argv``, one Gloo rank on the CPU."""
    args = parse_args(script, [*argv, "--backend", "gloo", "--no-cuda", "--log-dir", log_dir])
    # what main() adds before training (one rank, not verbose: no progress bars)
    os.makedirs(args.log_dir)
    args.checkpoint_format = os.path.join(args.log_dir, args.checkpoint_format)
    args.base_lr *= args.batches_per_allreduce
    args.verbose, args.log_writer, args.grad_scaler = False, None, None
    return args


def _vision_data(args):
    gen = torch.Generator().manual_seed(args.seed)
    x, y = torch.randn(40, 3, 12, 12, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    sampler, train = _loader(x[:32], y[:32], args.batch_size, shuffle=True)
    _, val = _loader(x[32:], y[32:], args.val_batch_size, shuffle=False)
    return sampler, train, val


def _run_vision(library, args, resume_from=0, loss=None):
    """The training part of the vision scripts' main() on one Gloo rank, with the
    CIFAR ResNet of ``args.model``: the optimizer's gradients at every step and the
    preconditioner."""
    models = example("vision.cifar_resnet")
    optimizers, engine, utils = example("vision.optimizers"), example("vision.engine"), example("utils")
    with pytest.MonkeyPatch.context() as mp, _process_group(mp):
        _bind(mp, library, optimizers, engine, utils)
        steps = _record_optimizer_grads(mp)
        torch.manual_seed(args.seed)
        model = torch.nn.parallel.DistributedDataParallel(models.get_model(args.model))
        optimizer, preconditioner, (lr_scheduler, kfac_scheduler) = optimizers.get_optimizer(model, args)
        assert isinstance(preconditioner, library.preconditioner.KFACPreconditioner)
        assert isinstance(kfac_scheduler, library.scheduler.LambdaParamScheduler)
        str(preconditioner)  # main() prints it
        if resume_from:  # as main() resumes
            checkpoint = torch.load(args.checkpoint_format.format(epoch=resume_from), weights_only=False)
            model.module.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
            preconditioner.load_state_dict(checkpoint["preconditioner"])
        sampler, train, val = _vision_data(args)
        loss = loss or torch.nn.CrossEntropyLoss()
        for epoch in range(resume_from + 1, args.epochs + 1):
            engine.train(epoch, model, optimizer, preconditioner, loss, sampler, train, args)
            engine.test(epoch, model, loss, val, args)
            lr_scheduler.step()
            kfac_scheduler.step(step=epoch)
            if epoch % args.checkpoint_freq == 0:
                utils.save_checkpoint(
                    model.module, optimizer, preconditioner, lr_scheduler, args.checkpoint_format.format(epoch=epoch)
                )
    return steps, preconditioner


@pytest.mark.parametrize("method", [[], ["--kfac-inv-method"]], ids=["eigen", "inverse"])
def test_cifar_example_gives_kfac_pytorchs_gradients_and_resumes_exactly(kfac, tmp_path, method):
    script = example("torch_cifar10_resnet")
    argv = CIFAR_ARGV + method
    theirs, their_p = _run_vision(kfac, _vision_args(script, str(tmp_path / "theirs"), argv))
    args = _vision_args(script, str(tmp_path / "ours"), argv)
    ours, our_p = _run_vision(kfac_ext, args)
    assert len(ours) == 16  # 4 epochs of 4 batches
    _assert_same_steps(ours, theirs)
    # the schedulers acted: damping 0.003 halved 3 times, intervals 1/2 doubled twice... then
    # (the lambda of epoch 4 counts both decay epochs) 5 times in all
    assert our_p.damping(0) == pytest.approx(their_p.damping) == pytest.approx(0.003 / 32)
    assert (
        (our_p.factor_update_steps(0), our_p.inv_update_steps(0))
        == (their_p.factor_update_steps, their_p.inv_update_steps)
        == (32, 64)
    )

    resumed, _ = _run_vision(kfac_ext, args, resume_from=2)
    assert len(resumed) == 8
    for a, b in zip(resumed, ours[8:]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# -------------------------------------------------------------- ImageNet ----


def test_imagenet_example_optimizer_under_its_own_defaults(kfac, tmp_path):
    """The ImageNet script's get_optimizer under its default K-FAC arguments (factors
    every 10 steps, eigendecompositions every 100, damping 0.001), two micro-batches
    per step (DDP's no_sync), its label-smoothing loss. The model is the CIFAR
    ResNet-20: the script's torchvision ResNet-50 is too big for a CPU test (and
    torchvision does not load here)."""
    script, utils = example("torch_imagenet_resnet"), example("utils")
    argv = [
        "--model",
        "resnet20",
        "--batch-size",
        "4",
        "--val-batch-size",
        "8",
        "--epochs",
        "1",
        "--batches-per-allreduce",
        "2",
    ]
    runs = []
    for library in (kfac, kfac_ext):
        args = _vision_args(script, str(tmp_path / library.__name__), argv)
        assert (args.kfac_factor_update_steps, args.kfac_inv_update_steps, args.kfac_damping) == (10, 100, 0.001)
        runs.append(_run_vision(library, args, loss=utils.LabelSmoothLoss(args.label_smoothing)))
    (theirs, _), (ours, p) = runs
    assert len(ours) == 4 and p.steps == 4  # 32 samples, batches of 4, 2 per step
    _assert_same_steps(ours, theirs)
