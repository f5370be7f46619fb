"""KFACPreconditioner(inv_lag_steps=k): eigendecompositions on a background thread,
installed k steps after the factors they decompose.

The reference is the dense float64 solve (A ⊗ G + λI)⁻¹ vec Γ with the factors
recorded at the step whose basis the rule says is in use, so each test checks
both the arithmetic and the timing of every basis change.
"""

import io

import pytest
import torch
from _kfac_reference import dense_precondition, grad_matrix
from torch import nn

import kfac_ext
from kfac_ext import ops
from kfac_ext.comm import LocalComm


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).double()


def _x(step):
    return torch.randn(6, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1000 + step))


def _backward(model, step):
    model.zero_grad()
    x = _x(step).to(next(model.parameters()).device)
    model(x).pow(2).mean().backward()


def _basis_step(step, due, lag):
    """The inverse-update step whose factors precondition `step`: the first one is
    used at once, a later one from `lag` steps on, or earlier when the next is due."""
    usable = [k for k in due if k <= step and (k == due[0] or k + lag <= step or any(k < k2 <= step for k2 in due))]
    return max(usable)


def _run(model, pre, steps, optimizer=None):
    """Per step: Γ before step(), the gradient after it, the factors after it."""
    modules = [l.module for l in pre.layers]
    record = []
    for s in range(steps):
        _backward(model, s)
        raw = [grad_matrix(m) for m in modules]
        pre.step()
        record.append((raw, [grad_matrix(m) for m in modules], [(l.A.clone(), l.G.clone()) for l in pre.layers]))
        if optimizer is not None:
            optimizer.step()
    return record


CUDA = pytest.mark.cuda  # skipped without a CUDA device (tests/conftest.py)


def _expected(method, a, g, gamma, damping):
    if method == "eigen":
        return dense_precondition(a, g, gamma, damping)
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    return torch.linalg.solve(g + damping * eye(g.shape[0]), gamma) @ torch.linalg.inv(a + damping * eye(a.shape[0]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("method", ["eigen", "inverse"])
@pytest.mark.parametrize("lag, inv_steps", [(0, 4), (1, 4), (3, 4), (2, 5), (3, 2), (7, 3)])
def test_lagged_basis_matches_dense_solve_with_the_right_factors(lag, inv_steps, method, device):
    # On a GPU model the lagged solve runs when it lands instead of in the background.
    model = _model().to(device)
    damping = 0.1
    pre = kfac_ext.KFACPreconditioner(
        model,
        factor_update_steps=1,
        inv_update_steps=inv_steps,
        damping=damping,
        kl_clip=None,
        inv_dtype=torch.float64,
        inv_lag_steps=lag,
        compute_method=method,
    )
    steps = 13
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # factors follow the trajectory
    record = _run(model, pre, steps, optimizer)
    due = list(range(0, steps, inv_steps))
    for s, (raw, precond, _) in enumerate(record):
        k = _basis_step(s, due, lag)
        for j, (gamma, p) in enumerate(zip(raw, precond)):
            a, g = (f.cpu() for f in record[k][2][j])
            torch.testing.assert_close(
                p.cpu(),
                _expected(method, a, g, gamma.cpu(), damping),
                msg=lambda m: f"step {s} layer {j} (basis of step {k}): {m}",
            )


def test_lag_differs_from_the_inline_update():
    # The reference test passes with lag 0 too; this one shows the lag is real.
    runs = {}
    for lag in (0, 2):
        model = _model()
        pre = kfac_ext.KFACPreconditioner(
            model, inv_update_steps=4, damping=0.1, kl_clip=None, inv_dtype=torch.float64, inv_lag_steps=lag
        )
        runs[lag] = _run(model, pre, 6)
    for s in range(6):
        same = all(torch.equal(p0, p2) for p0, p2 in zip(runs[0][s][1], runs[2][s][1]))
        assert same == (s not in (4, 5)), f"step {s}"


def _training(lag, steps, state=None, start=0):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pre = kfac_ext.KFACPreconditioner(
        model, factor_update_steps=2, inv_update_steps=5, damping=0.1, lr=0.05, inv_lag_steps=lag
    )
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        pre.load_state_dict(state["pre"])
    for s in range(start, steps):
        _backward(model, s)
        pre.step()
        optimizer.step()
    return model, optimizer, pre


@pytest.mark.parametrize("stop", [11, 13, 14])  # the update of step 10 lands in step 13
def test_resume_in_the_middle_of_a_lag_is_bit_identical(stop):
    whole, _, _ = _training(3, 20)
    model, optimizer, pre = _training(3, stop)
    assert ("pending_second_order" in pre.state_dict()) == (stop <= 13)
    buffer = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), pre=pre.state_dict()), buffer)
    buffer.seek(0)
    resumed, _, _ = _training(3, 20, torch.load(buffer), start=stop)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_pending_update_lands_even_without_a_lag_after_loading():
    # A checkpoint taken mid-lag loaded with inv_lag_steps=0 still installs the
    # pending basis at its step (solved inline then): the same curve.
    whole, _, _ = _training(2, 14)
    model, optimizer, pre = _training(2, 11)
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), pre=pre.state_dict())
    resumed, _, _ = _training(0, 14, state, start=11)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_invalid_lag_is_rejected(bad):
    with pytest.raises(ValueError, match="inv_lag_steps must be an integer >= 0"):
        kfac_ext.KFACPreconditioner(_model(), inv_lag_steps=bad)


def _mid_lag_state():
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, inv_update_steps=3, inv_lag_steps=2)
    _run(model, pre, 4)  # update at 3 lands at 5
    return pre.state_dict()


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p["factors"].__setitem__(0, torch.zeros(2, 2)), "must be a"),
        (lambda p: p["owned"].__setitem__(0, ["no.such.layer", "A"]), "malformed"),
        (lambda p: p["owned"][0].__setitem__(1, "X"), "'A' or 'G'"),
        (lambda p: p.pop("apply_step"), "malformed"),
        (lambda p: p["factors"].pop(), "factors for"),
    ],
)
def test_malformed_pending_update_is_rejected_and_nothing_is_loaded(corrupt, match):
    state = _mid_lag_state()
    corrupt(state["pending_second_order"])
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, inv_lag_steps=2)
    before = [(l.A.clone(), l.G.clone()) for l in pre.layers]
    with pytest.raises(ValueError, match=match):
        pre.load_state_dict(state)
    assert pre.steps == 0
    for (a, g), l in zip(before, pre.layers):
        assert torch.equal(a, l.A) and torch.equal(g, l.G)
    assert "pending_second_order" not in pre.state_dict()


def test_memory_usage_counts_the_snapshot_in_flight():
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, inv_update_steps=3, inv_lag_steps=2)
    _run(model, pre, 4)  # the update of step 3 is in flight
    factor_bytes = sum(4 * (l.a_dim**2 + l.g_dim**2) for l in pre.layers)
    assert pre.memory_usage()["pending_snapshot"] == factor_bytes
    _run(model, pre, 2)  # it lands in step 5
    assert pre.memory_usage()["pending_snapshot"] == 0


def test_reset_drops_the_pending_update():
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    pre = kfac_ext.KFACPreconditioner(model, inv_update_steps=3, inv_lag_steps=2, inv_dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    _run(model, pre, 4, optimizer)  # update at 3 still in flight
    pre.reset()
    model.load_state_dict(initial)
    assert "pending_second_order" not in pre.state_dict()
    after_reset = _run(model, pre, 7)
    twin = _model()
    fresh = _run(
        twin, kfac_ext.KFACPreconditioner(twin, inv_update_steps=3, inv_lag_steps=2, inv_dtype=torch.float64), 7
    )
    for s, (a, b) in enumerate(zip(after_reset, fresh)):
        assert all(torch.equal(x, y) for x, y in zip(a[1], b[1])), f"step {s}"


def test_background_failure_keeps_the_previous_basis(monkeypatch):
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, inv_update_steps=2, inv_lag_steps=1, kl_clip=None, inv_dtype=torch.float64)
    _run(model, pre, 1)
    kept = {i: {w: [t.clone() for t in ts] for w, ts in s.items()} for i, s in pre._second.items()}

    def failing(factors, clamp=True):
        raise RuntimeError("batched_eigh: factor 0 failed in float64")

    monkeypatch.setattr(ops, "batched_eigh", failing)
    _run(model, pre, 2)  # step 2 (due) submits to the thread; it fails there
    with pytest.warns(UserWarning, match="previous one is kept"):
        _run(model, pre, 1)  # step 3 installs: the failure surfaces here, on this thread
    assert pre.failed_inverse_updates == 2 * len(pre.layers)
    for i, s in pre._second.items():
        for w in "AG":
            assert all(torch.equal(a, b) for a, b in zip(s[w], kept[i][w]))


def test_cpu_solves_run_on_the_background_thread_and_the_first_one_inline(monkeypatch):
    import threading

    threads = []
    real = ops.batched_eigh

    def recording(factors, clamp=True):
        threads.append(threading.current_thread().name)
        return real(factors, clamp)

    monkeypatch.setattr(ops, "batched_eigh", recording)
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, inv_update_steps=2, inv_lag_steps=1)
    _run(model, pre, 6)  # updates at 0 (inline), 2 and 4 (background); 4's lands in 5
    assert threads[0] == threading.current_thread().name
    assert len(threads) == 3 and all(t.startswith("kfac-second-order") for t in threads[1:])


class _BystanderComm(LocalComm):
    """Rank 1 of a MEM-OPT-like layout that neither owns nor preconditions layer 0:
    it holds no second-order data for it, ever (collectives are no-ops here)."""

    rank = 1

    def eigen_owner(self, layer_idx, which):
        return 0 if layer_idx == 0 else 1

    def is_grad_worker(self, layer_idx):
        return layer_idx != 0

    @property
    def replicates_preconditioning(self):
        return False


def test_only_due_updates_are_lagged_on_a_rank_without_a_layers_data(monkeypatch):
    model = _model()
    pre = kfac_ext.KFACPreconditioner(model, inv_update_steps=5, inv_lag_steps=2, comm=_BystanderComm())
    submitted = []
    real = pre._solver.submit
    monkeypatch.setattr(pre._solver, "submit", lambda *a: submitted.append(pre.steps) or real(*a))
    _run(model, pre, 12)
    assert submitted == [5, 10]  # step 0 inline; nothing on the steps in between
