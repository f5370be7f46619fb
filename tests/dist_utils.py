"""Run a function on N Gloo processes on 127.0.0.1 and collect what each returns.

    results = run_workers(fn, world_size=2, args=(...,))   # raises if any rank failed
    outcomes = run_workers(fn, 2, check=False)             # per-rank value / error / exit code

``fn(rank, world_size, *args)`` runs after ``init_process_group`` and must be a
module-level function (the workers are spawned, so they import it). Values
travel back through ``torch.save`` bytes, never through shared memory, so a
worker may exit before the parent reads. A whole run is bounded by
``timeout``: a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import queue
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclasses.dataclass
class Outcome:
    rank: int
    value: object = None
    error: str | None = None  # formatted traceback when fn raised
    exitcode: int | None = None
    reported: bool = False  # fn returned or raised (a rank killed at shutdown afterwards is fine)

    @property
    def ok(self) -> bool:
        return self.reported and self.error is None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _to_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _worker(rank, world_size, port, pg_timeout_s, fn, args, out_queue):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        OMP_WAIT_POLICY="PASSIVE",
    )
    torch.set_num_threads(1)  # N processes share two cores
    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=pg_timeout_s)
        )
        value = fn(rank, world_size, *args)
        out_queue.put((rank, _to_bytes(value), None))
    except BaseException:  # noqa: BLE001  (report everything, including SystemExit)
        out_queue.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001  (a dead peer may make this fail; irrelevant)
                pass
        # Skip the slow interpreter teardown (seconds on a busy machine) once the
        # result is flushed to the parent.
        out_queue.close()
        out_queue.join_thread()
        os._exit(0)


def run_workers(
    fn, world_size: int, args: tuple = (), *, timeout: float = 90.0, pg_timeout_s: float = 30.0, check: bool = True
):
    """Spawn ``world_size`` ranks; return their values (check) or their Outcomes."""
    ctx = mp.get_context("spawn")
    out_queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, pg_timeout_s, fn, args, out_queue), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    outcomes = {r: Outcome(r) for r in range(world_size)}
    reported = set()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    timed_out = False
    while len(reported) < world_size:
        remaining = (deadline - datetime.datetime.now()).total_seconds()
        if remaining <= 0:
            timed_out = True
            break
        try:
            rank, payload, error = out_queue.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            # a rank that died without reporting (os._exit, a crash) will never report
            if all(p.exitcode is not None for r, p in enumerate(procs) if r not in reported):
                break
            continue
        reported.add(rank)
        outcomes[rank].reported = True
        outcomes[rank].error = error
        if payload is not None:
            outcomes[rank].value = torch.load(io.BytesIO(payload), weights_only=False)
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
    for r, p in enumerate(procs):
        outcomes[r].exitcode = p.exitcode
    if timed_out:
        raise TimeoutError(
            f"distributed run did not finish within {timeout} s; ranks that reported: {sorted(reported)}"
        )
    result = [outcomes[r] for r in range(world_size)]
    if not check:
        return result
    failed = [o for o in result if not o.ok]
    if failed:
        details = "\n".join(f"--- rank {o.rank} (exit code {o.exitcode}):\n{o.error}" for o in failed)
        raise RuntimeError(f"{len(failed)} of {world_size} ranks failed:\n{details}")
    return [o.value for o in result]


def assert_steps_match(got_steps, want_steps, label, rtol=1e-9):
    """Per step and per tensor, ‖got − want‖ / ‖want‖ < rtol; a failure names ``label``
    (a tuple: strategy, rank, ...), the step and the tensor's index."""
    for step, (got, want) in enumerate(zip(got_steps, want_steps)):
        for k, (g, w) in enumerate(zip(got, want)):
            err = float((g - w).norm() / w.norm())
            assert err < rtol, (*label, step, k, err)
