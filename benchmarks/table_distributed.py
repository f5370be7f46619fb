"""Distributed K-FAC on 2 and 4 Gloo processes (127.0.0.1): step time and bytes per strategy.

For each world size and strategy (COMM-OPT f=1, HYBRID-OPT f=1/2 on 4 ranks,
MEM-OPT f=1/N) it trains an MLP under DDP with factors and eigendecompositions
updated every step (the communication-heaviest setting) and reports the mean
step time, the K-FAC share of it (``preconditioner.step()``), and the bytes
each rank sends per step by kind: packed factor all-reduce, eigenbasis
broadcasts, preconditioned-gradient broadcasts. A DDP SGD step on the same
model is the baseline. "packed/full" is the factor payload against
all-reducing full n x n factors (what an unpacked implementation sends).

    python benchmarks/table_distributed.py [--steps 8] [--width 256]
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _machine import describe_machine
from torch import nn

from kfac_ext.distributed import DistributedComm
from kfac_ext.preconditioner import KFACPreconditioner


def _model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(128, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def _worker(rank, world_size, port, fraction, args, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # N processes share the machine's cores
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model = nn.parallel.DistributedDataParallel(_model(args.width))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    precond = comm = None
    if fraction is not None:
        comm = DistributedComm(grad_worker_fraction=fraction)
        precond = KFACPreconditioner(model, factor_update_steps=1, inv_update_steps=1, comm=comm, lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    local = args.batch // world_size
    data = [
        (torch.randn(local, 128, generator=gen), torch.randint(0, 10, (local,), generator=gen))
        for _ in range(args.steps + args.warmup)
    ]
    step_times, kfac_times = [], []
    for k, (x, y) in enumerate(data):
        if k == args.warmup and comm is not None:
            base = (comm.factor_elements, comm.eigen_elements, comm.precond_elements)
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        t1 = time.perf_counter()
        if precond is not None:
            precond.step()
        t2 = time.perf_counter()
        opt.step()
        if k >= args.warmup:
            step_times.append(time.perf_counter() - t0)
            kfac_times.append(t2 - t1)
    result = {"step": step_times, "kfac": kfac_times}
    if comm is not None:
        sent = [
            (now - before) * 4 / args.steps
            for now, before in zip((comm.factor_elements, comm.eigen_elements, comm.precond_elements), base)
        ]
        result["bytes"] = sent
        result["full_factor_bytes"] = 4 * sum(l.a_dim**2 + l.g_dim**2 for l in precond.layers)
        result["strategy"] = comm.strategy
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world_size, fraction, args):
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, _free_port(), fraction, args, out), nprocs=world_size)
        return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world_size)]


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128, help="global batch (split over ranks)")
    parser.add_argument("--worlds", default="2,4")
    args = parser.parse_args()
    print(
        f"Distributed K-FAC, Gloo on 127.0.0.1, MLP 128-{args.width}-{args.width}-{args.width}-10, "
        f"global batch {args.batch}, factors + eigh every step; median of {args.steps} steps"
    )
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {describe_machine(threads=False)}, "
        f"1 thread per rank; torch {torch.__version__}"
    )
    print("command: python benchmarks/table_distributed.py " + " ".join(sys.argv[1:]))
    print()
    print(
        "| ranks | strategy | step ms | K-FAC step ms | vs DDP SGD | factor KB/step/rank | "
        "eigen KB/step/rank | grad KB/step/rank | packed/full factor bytes |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for world in [int(w) for w in args.worlds.split(",")]:
        sgd = _run(world, None, args)
        sgd_ms = 1e3 * max(_median(r["step"]) for r in sgd)
        print(f"| {world} | DDP SGD | {sgd_ms:.1f} | - | 1.00x | - | - | - | - |", flush=True)
        fractions = [1.0] + ([0.5] if world >= 4 else []) + [1.0 / world]
        for f in fractions:
            res = _run(world, f, args)
            step = 1e3 * max(_median(r["step"]) for r in res)  # the slowest rank sets the pace
            kfac = 1e3 * max(_median(r["kfac"]) for r in res)
            per_rank = [sum(r["bytes"][k] for r in res) / world / 1e3 for k in range(3)]
            ratio = sum(r["bytes"][0] for r in res) / world / res[0]["full_factor_bytes"]
            print(
                f"| {world} | {res[0]['strategy']} (f={f:g}) | {step:.1f} | {kfac:.1f} | "
                f"{step / sgd_ms:.2f}x | {per_rank[0]:.0f} | {per_rank[1]:.0f} | {per_rank[2]:.0f} "
                f"| {ratio:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
