"""`kfac-ext train`'s options: the per-task defaults (where each number comes from), the
command-line flags, and how the flags a user gave and the task's defaults combine and are
checked before any run starts. The training itself is kfac_ext/app/train.py."""

from __future__ import annotations

import argparse
import math
import re

from kfac_ext.app.tasks import TASKS
from kfac_ext.app.validation import check_train_args

# Per-dataset defaults; the learning rates come from benchmarks/lr_sweep.py.
DEFAULTS = {
    # K-FAC preconditions every layer (the convolutions too) with relative damping and factor
    # decay 0.5: lr 0.2 and damping 0.1 from the sweep (3.5 epochs to 97 % on the sweep seeds,
    # against 5 with λ added to the factors as they are, whose lr was 0.1; the convolutions'
    # curvature is 1e-8 of the linear layers', so one absolute λ cannot serve both);
    # factor_init, per-example G and adaptive damping were measured on the sweep seeds and
    # did not help here (benchmarks/RESULTS.md).
    "digits": dict(
        model="digits-cnn",
        epochs=12,
        batch_size=64,
        lr_sgd=0.05,
        lr_kfac=0.2,
        lr_adamw=0.01,
        adamw_weight_decay=0.1,
        adamw_betas=(0.9, 0.999),
        factor_decay=0.5,
        relative_damping=True,
        lr_soap=0.01,
        soap_weight_decay=0.01,
        damping=0.1,
        skip_layers=(),
        weight_decay=5e-4,
        warmup_epochs=1.0,
        decay_epochs=None,
        target_accuracy=0.97,
        factor_update_steps=5,
        inv_update_steps=20,
        inv_lag_steps=2,
        threads=1,
        compute_method="eigen",
        factor_init="identity",
        per_example_g=False,
        adaptive_damping=0,
        auto_step=False,
        auto_step_damping=0.1,
        auto_step_interval=5,
    ),
    "cifar10": dict(
        model="resnet20",
        epochs=100,
        batch_size=128,
        lr_sgd=0.1,
        lr_kfac=0.1,
        lr_adamw=0.001,
        adamw_weight_decay=0.05,
        adamw_betas=(0.9, 0.999),
        factor_decay=0.95,
        lr_soap=0.001,  # not swept
        soap_weight_decay=0.05,
        damping=0.003,
        relative_damping=False,
        compute_method="eigen",
        factor_init="identity",
        per_example_g=False,
        adaptive_damping=0,
        auto_step=False,
        auto_step_damping=1.0,
        auto_step_interval=5,  # auto step: not measured
        skip_layers=(),
        weight_decay=5e-4,
        warmup_epochs=5.0,
        decay_epochs=None,
        target_accuracy=0.91,
        factor_update_steps=10,
        inv_update_steps=100,
        inv_lag_steps=0,
        threads=0,
    ),
}
# --task autoencoder (digits only): these replace the digits defaults.
# Learning rates, damping and weight decays from benchmarks/lr_sweep.py --task autoencoder
# (seeds 100, 101; K-FAC's with the inverse method); the target is a loss the tuned SGD
# reaches in about half the schedule. AdamW's betas (0.7, 0.9) come from the equal-budget
# probe of benchmarks/batch_scaling.py (2026-12-08, RESULTS.md "Autoencoder time, fifth pass"):
# with torch's (0.9, 0.999) its best lr-sweep setting plateaued near 2.8; with them the same
# lr x weight-decay grid reaches 1.5 in 10.5 epochs (lr 0.003, wd 0; lr 0.01 took 21).
AUTOENCODER_DEFAULTS = dict(
    model="digits-autoencoder",
    epochs=40,
    batch_size=64,
    lr_sgd=0.04,
    lr_kfac=0.025,
    lr_adamw=0.003,
    adamw_betas=(0.7, 0.9),
    adamw_weight_decay=0.0,
    lr_soap=0.003,
    soap_weight_decay=0.0,
    damping=0.03,
    compute_method="inverse",
    factor_decay=0.95,
    relative_damping=False,  # with decay 0.5, 80 steps to 105 in a B 64 probe; not swept or timed
    skip_layers=(),
    weight_decay=0.0,
    target_accuracy=1.0,
    target_loss=1.5,
)
# --task lm (kfac_ext/app/lm_task.py): a byte-level GPT on Python's standard library; these
# replace the digits defaults. AdamW's lr and betas, K-FAC's lr, damping, method, G scale and
# factor decay: the best of the batch-32 sweep (2026-12-07 15:01, seeds 100 and 101,
# benchmarks/batch_scaling.py --task lm --variants; RESULTS.md): with the batch-mean G
# (1e-10-1e-7 here) λ swamped it, so G is per loss term; SGD's and SOAP's are not swept.
LM_DEFAULTS = dict(
    model="char-gpt",
    epochs=2,
    batch_size=32,
    lr_sgd=0.1,
    lr_kfac=0.0177,
    lr_adamw=0.00212,
    adamw_weight_decay=0.0,
    adamw_betas=(0.8, 0.95),
    lr_soap=0.003,
    soap_weight_decay=0.0,
    damping=0.03,
    compute_method="inverse",
    per_example_g=True,
    factor_decay=0.5,
    relative_damping=False,  # 90-96 steps at B 16 with it, against 80 without
    skip_layers=(),
    weight_decay=0.0,
    warmup_epochs=0.0,
    factor_update_steps=1,
    inv_update_steps=1,
    target_accuracy=1.0,
    target_loss=2.3,
)
TORCH_ADAMW_BETAS = (0.9, 0.999)
OPTIMIZERS = ("sgd", "adamw", "kfac", "soap")
ALIASES = {"both": ("sgd", "kfac")}  # and "all": every installed optimizer
NAMES = {"sgd": "SGD", "adamw": "AdamW", "kfac": "K-FAC", "soap": "SOAP"}


def installed_optimizers() -> tuple[str, ...]:
    """sgd, adamw, kfac, and soap when heavyball (the [soap] extra) is installed."""
    import importlib.util

    return tuple(n for n in OPTIMIZERS if n != "soap" or importlib.util.find_spec("heavyball") is not None)


def parse_optimizers(text: str) -> tuple[str, ...]:
    """'sgd,adamw,kfac' -> ('sgd', 'adamw', 'kfac'); 'both' and 'all' expand."""
    names: list[str] = []
    for word in (w.strip().lower() for w in text.split(",")):
        if word == "all":
            expanded = installed_optimizers()
        elif word in ALIASES:
            expanded = ALIASES[word]
        elif word in OPTIMIZERS:
            expanded = (word,)
        else:
            raise ValueError(
                f"--optimizer {text}: unknown optimizer {word!r}; give a comma "
                f"list of {', '.join(OPTIMIZERS)}, or both (sgd,kfac) or all"
            )
        names += [n for n in expanded if n not in names]
    if "soap" in names and "soap" not in installed_optimizers():
        raise ValueError("--optimizer soap needs the heavyball package: pip install 'kfac_ext[soap]'")
    return tuple(names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("data and model")
    d.add_argument(
        "--data", choices=sorted(DEFAULTS), default="digits", help="dataset (default digits: built into scikit-learn)"
    )
    d.add_argument(
        "--data-dir", default=None, help="folder with the CIFAR-10 python batches (data_batch_1..5, test_batch)"
    )
    d.add_argument(
        "--model",
        default=None,
        help="digits-cnn, digits-mlp, digits-autoencoder, resnet20, resnet32, "
        "resnet56 (default: digits-cnn for digits, resnet20 for cifar10, "
        "digits-autoencoder for --task autoencoder)",
    )
    d.add_argument(
        "--task",
        choices=TASKS,
        default="classify",
        help="classify (default): cross-entropy, target a test accuracy; "
        "autoencoder (digits): reconstruct the 64 pixels, target a training "
        "reconstruction loss (--target-loss); lm: a byte-level GPT on Python's "
        "standard-library sources, target a validation loss (--target-loss)",
    )
    o = parser.add_argument_group("optimisation (every optimizer)")
    o.add_argument(
        "--optimizer",
        default="both",
        help="comma list of sgd, adamw, kfac, soap (soap needs the [soap] extra, "
        "heavyball); both = sgd,kfac (default); all = every installed one",
    )
    o.add_argument(
        "--epochs", type=int, default=None, help="length of the lr schedule (default 12 on digits, 100 on cifar10)"
    )
    o.add_argument(
        "--batch-size", type=int, default=None, help="global batch size (default 64 on digits, 128 on cifar10)"
    )
    o.add_argument(
        "--lr-sgd", type=float, default=None, help="peak learning rate for SGD (default 0.05 on digits, 0.1 on cifar10)"
    )
    o.add_argument(
        "--lr-kfac", type=float, default=None, help="peak learning rate for K-FAC (default 0.1 on digits and cifar10)"
    )
    o.add_argument(
        "--lr-adamw", type=float, default=None, help="peak learning rate for AdamW (default from the digits sweep)"
    )
    o.add_argument(
        "--adamw-weight-decay",
        type=float,
        default=None,
        help="AdamW's decoupled weight decay (default from the digits sweep)",
    )
    o.add_argument(
        "--adamw-betas",
        type=float,
        nargs=2,
        default=None,
        metavar=("BETA1", "BETA2"),
        help="AdamW's betas (default torch's 0.9 0.999; --task lm: 0.8 0.95, from its sweep)",
    )
    o.add_argument("--lr-soap", type=float, default=None, help="peak learning rate for SOAP")
    o.add_argument("--soap-weight-decay", type=float, default=None, help="SOAP's decoupled weight decay")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, also K-FAC's (default 0.9)")
    o.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="SGD's and K-FAC's L2 weight decay (default 5e-4; 0 for the autoencoder)",
    )
    o.add_argument(
        "--warmup-epochs", type=float, default=None, help="linear lr warm-up from lr/10 over this many epochs"
    )
    o.add_argument(
        "--decay-epochs",
        type=float,
        nargs="*",
        default=None,
        help="epochs at which the lr is multiplied by --decay-factor (default: 50%% and 75%% of --epochs)",
    )
    o.add_argument("--decay-factor", type=float, default=0.1, help="default 0.1")
    o.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="test accuracy (fraction) that time-to-target measures (default 0.97 on digits, 0.91 on cifar10)",
    )
    o.add_argument(
        "--target-loss",
        type=float,
        default=None,
        help="--task autoencoder: training reconstruction loss (squared error summed "
        "over the 64 pixels, mean over images) that time-to-target measures",
    )
    k = parser.add_argument_group("K-FAC")
    k.add_argument(
        "--compute-method",
        choices=("eigen", "inverse"),
        default=None,
        help="eigen: eigen-basis preconditioning (default); inverse: damped factor "
        "inverses (two GEMMs a layer instead of four; damping added to each "
        "factor, so it wants its own --damping; the autoencoder's default, "
        "whose square 256-wide layers make the GEMMs most of a K-FAC step)",
    )
    k.add_argument(
        "--damping",
        type=float,
        default=None,
        help="lambda: added to the eigenvalue products (eigen) or to each factor "
        "(inverse); default 0.1 on digits, 0.003 on cifar10",
    )
    k.add_argument(
        "--skip-layers",
        nargs="*",
        default=None,
        metavar="PATTERN",
        help="layers K-FAC leaves to plain SGD steps: regular expressions matched "
        "against module names and class names, e.g. Conv2d or '^0$'. Default: "
        "none (every layer is preconditioned); the flag with no pattern "
        "means the same",
    )
    k.add_argument(
        "--factor-decay",
        type=float,
        default=None,
        help="running-average weight of the factors (default 0.95; --task lm: 0.5)",
    )
    k.add_argument(
        "--factor-init",
        choices=("identity", "first_batch"),
        default=None,
        help="start of the running factors: identity (kfac-pytorch) or the first captured batch",
    )
    k.add_argument(
        "--per-example-g",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale G by (batch x loss terms per sample)**2, the per-loss-term factor of Martens & Grosse "
        "(a loss term is a sample, or a byte for --task lm; --damping is then in those units)",
    )
    k.add_argument(
        "--relative-damping",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="divide each factor by its mean eigenvalue before the solve, so --damping is "
        "relative to each layer's curvature (docs/design.md §2); default on for the digits CNN, "
        "off for the other tasks and whenever --adaptive-damping is given",
    )
    k.add_argument(
        "--adaptive-damping",
        type=int,
        default=None,
        metavar="T",
        help="adapt the damping every T steps by the Levenberg-Marquardt rule on "
        "the reduction ratio of the K-FAC quadratic model (one extra forward "
        "pass every T steps; --damping is the start); 0: fixed damping",
    )
    k.add_argument(
        "--auto-step",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="K-FAC chooses its step length and momentum each step from the exact "
        "Gauss-Newton quadratic model (Martens & Grosse 2015, sec. 7: a "
        "forward-mode pass in two directions a step); its optimizer becomes "
        "SGD with lr 1, "
        "momentum 0, and --lr-kfac, the lr schedule (warm-up, decays), "
        "--momentum and --kl-clip do not apply to it; --weight-decay enters "
        "the quadratic model instead (kfac_ext/auto_step.py)",
    )
    k.add_argument(
        "--auto-step-damping",
        type=float,
        default=None,
        metavar="LAMBDA",
        help="--auto-step: the quadratic model's starting damping, in units of "
        "the batch-mean loss's curvature (not --damping's; default 0.1 on "
        "digits, the best of 0.01-100 on both digits tasks; 1 on cifar10)",
    )
    k.add_argument(
        "--auto-step-interval",
        type=int,
        default=None,
        metavar="T",
        help="--auto-step: adapt its damping every T steps by the "
        "Levenberg-Marquardt rule (one extra forward pass every T steps); "
        "0 keeps it fixed (default 5)",
    )
    k.add_argument("--kl-clip", type=float, default=0.001, help="default 0.001")
    k.add_argument(
        "--factor-update-steps",
        type=int,
        default=None,
        help="steps between factor updates before the first lr decay (default 5 on digits, 10 on cifar10)",
    )
    k.add_argument(
        "--inv-update-steps",
        type=int,
        default=None,
        help="steps between eigendecompositions before the first lr decay (default 20 on digits, 100 on cifar10)",
    )
    k.add_argument(
        "--inv-lag-steps",
        type=int,
        default=None,
        help="install each eigendecomposition this many steps after its factors, "
        "solving it on a background thread meanwhile (CPU; default 2 on digits, "
        "whose one training thread leaves a core free; 0 on cifar10)",
    )
    k.add_argument(
        "--interval-growth",
        type=float,
        default=2.0,
        help="both update intervals are multiplied by this at every lr decay "
        "(dynamic decoupling: curvature is refreshed less as training settles)",
    )
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="seeds every random choice")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if present)")
    r.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on digits: its tiny layers run several "
        "times faster on one thread than on two busy cores; 0 = torch's default)",
    )
    r.add_argument(
        "--save",
        metavar="DIR",
        default=None,
        help="write a checkpoint per run (DIR/sgd.pt, DIR/kfac.pt) after every epoch",
    )
    r.add_argument(
        "--resume", metavar="DIR", default=None, help="continue the runs checkpointed in DIR (same settings required)"
    )
    r.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs of the schedule (resume later)",
    )
    r.add_argument("--plot", default="kfac_ext_train.png", help="PNG of the learning curves ('' to skip)")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logs")


def resolve_defaults(a: argparse.Namespace) -> None:
    if a.task == "autoencoder" and a.data != "digits":
        raise ValueError(f"--task autoencoder: only --data digits is supported; got --data {a.data}")
    a.optimizers = parse_optimizers(a.optimizer)
    _check_flags_apply(a)  # before the defaults fill in what the user did not give
    defaults = dict(DEFAULTS[a.data], target_loss=None)
    if a.task == "autoencoder":
        defaults.update(AUTOENCODER_DEFAULTS)
    if a.task == "lm":
        defaults.update(LM_DEFAULTS)
    if a.relative_damping is None and a.adaptive_damping:
        a.relative_damping = False  # the two do not combine: the flag given wins over a default
    for key, value in defaults.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.decay_epochs is None:
        a.decay_epochs = [0.5 * a.epochs, 0.75 * a.epochs]
    check_train_args(a)  # every flag, whatever --optimizer runs (kfac_ext/app/validation.py)
    if a.adaptive_damping < 0:
        raise ValueError(f"--adaptive-damping must be an integer >= 0 (0: fixed damping); got {a.adaptive_damping}")
    if a.auto_step and a.adaptive_damping:
        raise ValueError(
            "--adaptive-damping and --auto-step: the auto step adapts its own "
            "damping (--auto-step-interval); give one of them"
        )
    for flag in ("adamw_weight_decay", "soap_weight_decay"):
        value = getattr(a, flag)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{flag.replace('_', '-')} must be a finite number >= 0; got {value:g}")
    if a.target_loss is not None:
        if a.task == "classify":
            raise ValueError(
                "--target-loss applies to --task autoencoder and lm; classification "
                "targets a test accuracy (--target-accuracy)"
            )
        if not (math.isfinite(a.target_loss) and a.target_loss > 0):
            raise ValueError(f"--target-loss must be a finite number > 0; got {a.target_loss:g}")
    for pattern in a.skip_layers:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"--skip-layers {pattern!r} is not a regular expression: {exc}") from None


def _check_flags_apply(a: argparse.Namespace) -> None:
    """Flags that would be silently ignored by the runs asked for are refused."""
    if "kfac" not in a.optimizers:
        for flag, value in (("--auto-step", a.auto_step), ("--adaptive-damping", a.adaptive_damping)):
            if value:
                raise ValueError(
                    f"{flag} applies to --optimizer kfac, which this run does not train (--optimizer {a.optimizer})"
                )
    if a.task == "autoencoder" and a.target_accuracy is not None:
        raise ValueError(
            "--target-accuracy applies to --task classify; the autoencoder targets "
            "a training reconstruction loss (--target-loss)"
        )
