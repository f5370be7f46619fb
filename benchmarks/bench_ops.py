"""pytest-benchmark comparisons of the kfac_ext CPU ops with the torch compositions they replace.

The cases (shapes, both implementations, FLOP/byte floors) are those of
table_ops.py (ResNet-20 shapes; ``KFAC_EXT_BENCH_FULL=1`` adds ResNet-50's).
Each case is benchmarked twice, impl=ours and impl=torch:

    .venv/bin/python -m pytest benchmarks/bench_ops.py --benchmark-enable \\
        --benchmark-group-by=param:case --benchmark-columns=min,median,rounds
"""

import os

import pytest
import table_ops

CASES = {f"{c.op} {c.shape}": c for c in table_ops.all_cases(quick=os.environ.get("KFAC_EXT_BENCH_FULL") != "1")}


@pytest.mark.parametrize("impl", ["ours", "torch"])
@pytest.mark.parametrize("case", list(CASES))
def test_op(benchmark, case, impl):
    c = CASES[case]
    fn = c.ours if impl == "ours" else c.torch
    benchmark.extra_info.update(flops=c.flops, bytes=c.bytes)
    benchmark.pedantic(fn, rounds=max(3, c.reps), warmup_rounds=1)
