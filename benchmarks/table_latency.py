"""Latency placement at scale: `kfac-ext place FILE --objective latency --json` on the 8
bundled latency workloads, one subprocess each (exactly the user's command), as a
markdown table: value, proven lower bound, gap = (value - bound) / value, wall seconds,
and the previous solver's value and gap for comparison.

    python benchmarks/table_latency.py                  # --time-limit 60, as in issue 16
    python benchmarks/table_latency.py --time-limit 10

"Previous" = commit 19fe8c0 (big-M MILP from the best cheap contiguous split, path
bound), run by us with ``solve_milp(graph, objective="latency", time_limit=60)`` on
2026-12-01 on this machine (2-core AMD EPYC, shared with other jobs).
"""
import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import time

from _machine import describe_machine

ROOT = pathlib.Path(__file__).resolve().parents[1]
LATENCY = ROOT / "workloads" / "latency-inputs"
FILES = ["LayerGraphs/bert24_inference.json", "LayerGraphs/gnmt_inference.json",
         "LayerGraphs/inceptionv3_inference.json", "LayerGraphs/resnet50_inference.json",
         "OperatorGraphs/bert_l-12_inference.json", "OperatorGraphs/bert_l-3_inference.json",
         "OperatorGraphs/bert_l-6_inference.json", "OperatorGraphs/resnet50_inference.json"]
# (value, gap) of commit 19fe8c0 at a 60 s limit (see the module docstring)
PREVIOUS = {"LayerGraphs/bert24_inference.json": (100.2185, 0.0),
            "LayerGraphs/gnmt_inference.json": (231.2631, 0.2111),
            "LayerGraphs/inceptionv3_inference.json": (1167.1293, 0.8327),
            "LayerGraphs/resnet50_inference.json": (1151.8619, 0.8373),
            "OperatorGraphs/bert_l-12_inference.json": (2938.0240, 0.7926),
            "OperatorGraphs/bert_l-3_inference.json": (670.5852, 0.9287),
            "OperatorGraphs/bert_l-6_inference.json": (1040.7985, 0.9279),
            "OperatorGraphs/resnet50_inference.json": (3222.1676, 0.9100)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per workload")
    args = ap.parse_args()
    if not LATENCY.is_dir():
        print(f"workloads not found at {LATENCY}", file=sys.stderr)
        return 1
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{describe_machine(threads=False)}, `python {' '.join(sys.argv)}`; each row: "
          f"`kfac-ext place FILE --objective latency --time-limit {args.time_limit:g} --json`\n")
    print("| workload | value | lower bound | gap | s | status | previous value | previous gap |")
    print("|---|---|---|---|---|---|---|---|")
    for name in FILES:
        cmd = [sys.executable, "-m", "kfac_ext", "place", str(LATENCY / name), "--objective", "latency",
               "--time-limit", f"{args.time_limit:g}", "--json"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1]} | | | | | | |", flush=True)
            continue
        out = json.loads(proc.stdout)  # exactly one object, or this raises
        stats = out["stats"]
        prev_value, prev_gap = PREVIOUS[name]
        print(f"| {name} | {out['value']:.4f} | {out['lower_bound']:.4f} | {100 * stats['gap']:.2f} % "
              f"| {seconds:.1f} | {stats.get('status', '')} | {prev_value:.4f} | {100 * prev_gap:.1f} % |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
