"""Layer registration and capture of KFACPreconditioner (kfac_ext.layers)."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

import kfac_ext


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, groups=2, padding=1)
        )
        self.head = nn.Linear(4 * 5 * 5, 6)
        self.classifier = nn.Linear(6, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.head(self.features(x).flatten(1))))


def _names(p):
    return [l.name for l in p.layers]


def test_registers_supported_layers_one_per_conv_group():
    p = kfac_ext.KFACPreconditioner(_Net())
    assert _names(p) == ["features.0", "features.2[group 0]", "features.2[group 1]", "head", "classifier"]
    dims = [(l.a_dim, l.g_dim) for l in p.layers]
    assert dims == [(3 * 9 + 1, 4), (2 * 9 + 1, 2), (2 * 9 + 1, 2), (4 * 25 + 1, 6), (7, 2)]


@pytest.mark.parametrize(
    "skip, expected",
    [
        ("classifier|features.2", ["features.0", "head"]),
        (["^head$", "CLASSIFIER", r"features\.2"], ["features.0"]),
        ("conv2d", ["head", "classifier"]),  # class name, case-insensitive
        ("linear|features.2", ["features.0"]),
    ],
)
def test_skip_layers_by_name_or_class(skip, expected, recwarn):
    p = kfac_ext.KFACPreconditioner(_Net(), skip_layers=skip)
    assert _names(p) == expected


def test_skipped_layers_keep_their_plain_gradient():
    torch.manual_seed(0)
    net = _Net()
    p = kfac_ext.KFACPreconditioner(net, skip_layers="conv2d", damping=0.1)
    for _ in range(2):  # the second step preconditions with the first step's factors
        net.zero_grad()
        net(torch.randn(4, 3, 5, 5)).sum().backward()
        before = {n: q.grad.clone() for n, q in net.named_parameters()}
        p.step()
    for name, param in net.named_parameters():
        changed = not torch.equal(param.grad, before[name])
        assert changed == (not name.startswith("features.")), name  # the convs are skipped


def test_frozen_weight_skipped_frozen_bias_dropped_from_factor():
    net = _Net()
    net.head.weight.requires_grad_(False)
    net.classifier.bias.requires_grad_(False)
    p = kfac_ext.KFACPreconditioner(net, skip_layers=r"features\.2")
    assert _names(p) == ["features.0", "classifier"]
    assert p.layers[1].a_dim == 6 and not p.layers[1].has_bias
    net(torch.randn(2, 3, 5, 5)).sum().backward()
    p.step()  # weight-only K-FAC for classifier; bias grad absent, no crash
    assert net.classifier.bias.grad is None


def test_inplace_relu_after_conv_and_hooks_only_on_capture_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    p = kfac_ext.KFACPreconditioner(model, factor_update_steps=2)
    for step in range(3):
        model.zero_grad()
        model(torch.randn(4, 2, 6, 6)).sum().backward()
        captured = [l.a_count for l in p.layers]
        assert captured == ([1, 1] if step % 2 == 0 else [0, 0])
        p.step()
    assert [l.factor_updates for l in p.layers] == [2, 2]


def test_shared_module_registered_once_and_accumulates_both_uses():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    p = kfac_ext.KFACPreconditioner(model)
    assert _names(p) == ["0"]
    model(torch.randn(4, 3)).sum().backward()
    assert p.layers[0].a_count == 2 and p.layers[0].g_count == 2


def test_repr_and_memory_usage():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3, bias=False))
    p = kfac_ext.KFACPreconditioner(model)
    text = repr(p)
    assert "0 (Linear): A 6x6, G 4x4" in text and "2 (Linear): A 4x4, G 3x3" in text
    mem = p.memory_usage()
    assert mem["factors"] == 4 * (36 + 16 + 16 + 9) and mem["eigen"] == 0
    model(torch.randn(2, 5)).sum().backward()
    p.step()
    assert p.memory_usage()["eigen"] == 4 * (36 + 6 + 16 + 4 + 16 + 4 + 9 + 3)


def test_ddp_wrapped_model_registers_inner_names():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'init')}", rank=0, world_size=1)
        try:
            inner = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
            ddp = nn.parallel.DistributedDataParallel(inner)
            p = kfac_ext.KFACPreconditioner(ddp)
            assert _names(p) == ["0", "2"]
            ddp(torch.randn(5, 4)).sum().backward()
            p.step()
            assert all(l.factor_updates == 1 for l in p.layers)
            plain = kfac_ext.KFACPreconditioner(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
            plain.load_state_dict(p.state_dict())  # same names: checkpoints interchange
        finally:
            dist.destroy_process_group()


def test_gradient_views_skip_the_slice_only_for_whole_rows():
    # An ungrouped layer hands the op its .grad tensors themselves (no view per step); a
    # conv group still gets its own rows, and has_grad(current) agrees with has_grad().
    p = kfac_ext.KFACPreconditioner(_Net())
    p._model(torch.randn(2, 3, 5, 5)).sum().backward()
    for layer in p.layers:
        assert layer.has_grad(layer.current_params()) == layer.has_grad() is True
        w, b = layer.grad_tensors()
        wg, bg = layer.weight.grad, layer.bias.grad
        if layer.group is None:
            assert w is wg and b is bg
        else:
            assert torch.equal(w, wg[layer.out_slice]) and w.shape[0] == layer.g_dim < wg.shape[0]
            assert torch.equal(b, bg[layer.out_slice]) and w.data_ptr() == wg[layer.out_slice].data_ptr()


def test_capture_with_a_factor_on_another_device_keeps_the_wrappers_error():
    # The capture path calls ops.cov_update_, whose fast path (one device) goes straight
    # to the kernel; a device mismatch still gets the wrapper's check, which names the
    # devices (here: a meta factor, CPU rows).
    layer = kfac_ext.KFACPreconditioner(nn.Sequential(nn.Linear(2, 3))).layers[0]
    layer.A_sum = torch.empty(3, 3, device="meta")
    with pytest.raises(RuntimeError, match=r"cov_update_: x must be on the device of factor \(meta\); got cpu"):
        layer.add_activation_rows(torch.randn(4, 2))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model, pre, steps=7):
    torch.manual_seed(1)
    hooks = []
    for _ in range(steps):
        x = torch.randn(16, 5)
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        pre.step()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        hooks.append([len(l.module._forward_hooks) for l in pre.layers])
    return hooks


def test_forward_hook_is_off_between_capture_steps_and_results_unchanged():
    parked, kept = _mlp(), _mlp()
    pre = kfac_ext.KFACPreconditioner(parked, factor_update_steps=3, inv_update_steps=3, damping=0.1)
    ref_pre = kfac_ext.KFACPreconditioner(kept, factor_update_steps=3, inv_update_steps=3, damping=0.1)
    for layer in ref_pre.layers:  # the hook stays on, as before parking existed
        layer._can_park = lambda: False
    hooks = _train(parked, pre)
    assert _train(kept, ref_pre) == [[1, 1]] * 7
    # Seen after step s: on for step s + 1, which captures when it is a multiple of 3.
    assert hooks == [[0, 0], [0, 0], [1, 1], [0, 0], [0, 0], [1, 1], [0, 0]]
    for p, q in zip(parked.parameters(), kept.parameters()):
        assert torch.equal(p, q)


def test_capture_set_by_hand_puts_the_hook_back():
    model = _mlp()
    pre = kfac_ext.KFACPreconditioner(model, factor_update_steps=3, inv_update_steps=3)
    _train(model, pre, steps=1)
    layer = pre.layers[0]
    assert not layer.capture and not layer.module._forward_hooks
    layer.capture = True
    model(torch.randn(4, 5))
    assert layer.a_count == 1


def test_forward_hook_stays_when_the_module_has_other_hooks_or_was_removed():
    model = _mlp()
    pre = kfac_ext.KFACPreconditioner(model, factor_update_steps=3, inv_update_steps=3)
    seen = []
    model[0].register_forward_hook(lambda m, a, o: seen.append(1))
    _train(model, pre, steps=4)
    ours = pre.layers[0]._handles[0].id
    assert list(model[0]._forward_hooks)[0] == ours  # still first, never taken off
    assert len(seen) == 4
    assert not model[2]._forward_hooks  # the other layer's (its only hook) is off
    pre.remove_hooks()
    for layer in pre.layers:
        layer.capture = True
    assert list(model[0]._forward_hooks) != [ours] and not model[2]._forward_hooks
