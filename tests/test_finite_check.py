"""The factor finite check (preconditioner._all_finite_pairs): one float64 sum per factor."""

import torch

from kfac_ext.preconditioner import _all_finite_pairs


def test_flags_each_pair_by_any_non_finite_entry():
    a = [torch.ones(5, 5) for _ in range(3)]
    g = [torch.ones(4, 4) for _ in range(3)]
    a[0][1, 3] = float("inf")  # off the diagonal: a check of the diagonal would miss it
    g[2][2, 0] = float("nan")
    big = torch.full((3, 3), 3e38)  # finite; a float32 sum would overflow to inf
    tensors = [a[0], g[0], a[1], g[1], a[2], g[2], big, torch.ones(2)]
    assert _all_finite_pairs(tensors) == [False, True, False, True]
    assert _all_finite_pairs([torch.full((3,), -float("inf")), torch.ones(1)]) == [False]
    assert _all_finite_pairs([]) == []


def test_float64_and_empty_factors():
    pairs = [torch.zeros(0, 0, dtype=torch.float64), torch.eye(2, dtype=torch.float64)]
    assert _all_finite_pairs(pairs) == [True]
