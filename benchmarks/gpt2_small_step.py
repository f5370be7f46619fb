"""GPT-2 small (124 M parameters, from its default config: no weights downloaded) under
KFACPreconditioner: which factors go diagonal, the bytes memory() reports, and the peak
resident memory and wall time of construction plus one step (batch 1 × 32 tokens).

    PYTHONPATH=. python benchmarks/gpt2_small_step.py

Prints ``key value`` lines (tests/test_transformer_models.py reads them). Wall times on a
shared 2-core machine are indicative only.
"""

import resource
import time
import warnings

import torch
import transformers

import kfac_ext


def main() -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    print("params", sum(p.numel() for p in model.parameters()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = kfac_ext.KFACPreconditioner(model)
    print("warning", " | ".join(str(w.message) for w in caught if "diagonal" in str(w.message)))
    report = p.memory()
    print("layers", len(report))
    print("preconditioner_bytes", sum(e["total"] for e in report.values()))
    biggest = max(report.items(), key=lambda kv: kv[1]["total"])
    print("largest_layer", biggest[0], biggest[1]["total"])
    ids = torch.randint(0, 50257, (1, 32))
    t1 = time.perf_counter()
    model(ids, labels=ids).loss.backward()
    t2 = time.perf_counter()
    p.step()
    t3 = time.perf_counter()
    print("seconds_build", round(t1 - t0, 1))
    print("seconds_forward_backward", round(t2 - t1, 1))
    print("seconds_step", round(t3 - t2, 1))
    print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    main()
