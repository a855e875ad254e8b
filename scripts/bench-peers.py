#!/usr/bin/env python3
"""Exact attention: Subquadratic's `flash` against onnxruntime and PyTorch, side by side in one run.

Peers (install in a venv; they are not needed by the tests):
    python3 -m venv .venv-peers && .venv-peers/bin/pip install onnxruntime onnx numpy torch
    SUBQ_TARGET_CPU=native swift build -c release --scratch-path .build-native --product subq
    .venv-peers/bin/python scripts/bench-peers.py --subq .build-native/release/subq

For each length and masking it times onnxruntime's com.microsoft MultiHeadAttention (CPU provider),
PyTorch's scaled_dot_product_attention (CPU) and `subq bench --method flash`, all on the same number
of threads, and prints median times, GFLOP/s (4·N²·D·H, causal counting the visible half) and the
ratio of each peer's time to Subquadratic's. Run it on an otherwise idle machine: shared cores
halve every figure.

With `--rounds R` (default 3) the three are timed R times in turn, the order rotating each round
(ort, torch, subq; then torch, subq, ort; …), so that a slow phase of a shared host hits each of
them alike. Each cell is the median over the rounds of that round's median time, and the ratio is
the median over the rounds of (best peer's time ÷ subq's time) within the round; `--verbose`
prints every round.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def flops(n, h, d, causal):
    pairs = n * (n + 1) / 2 if causal else n * n
    return 4.0 * pairs * d * h


def time_it(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def prepare_ort(n, h, d, causal, threads):
    """A function timing `repeats` runs of onnxruntime's MultiHeadAttention (median s), and its label."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None, "onnxruntime not installed"
    hidden = h * d
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                            num_heads=h, unidirectional=1 if causal else 0)
    graph = helper.make_graph(
        [node], "mha",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, n, hidden]) for x in "qkv"],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, n, hidden])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {x: rng.standard_normal((1, n, hidden), dtype=np.float32) for x in "qkv"}
    return (lambda repeats: time_it(lambda: sess.run(None, feeds), repeats)), f"onnxruntime {ort.__version__} MultiHeadAttention"


def prepare_torch(n, h, d, causal, threads):
    """A function timing `repeats` runs of PyTorch's scaled_dot_product_attention (median s), and its label."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, n, d, generator=g) for _ in range(3))
    f = torch.nn.functional.scaled_dot_product_attention

    def run():
        with torch.no_grad():
            f(q, k, v, is_causal=causal)

    return (lambda repeats: time_it(run, repeats)), f"torch {torch.__version__} scaled_dot_product_attention"


def bench_subq(subq, n, h, d, causal, threads, repeats):
    args = [subq, "bench", "--method", "flash", "--n", str(n), "--heads", str(h), "--dim", str(d),
            "--repeat", str(repeats), "--threads", str(threads), "--json"] + (["--causal"] if causal else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    return report["rows"][0]["medianSeconds"], report["build"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subq", default=".build-native/release/subq")
    ap.add_argument("--n", default="4096,8192")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", default="64,128")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--masking", default="non-causal,causal")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three, in rotating order")
    ap.add_argument("--verbose", action="store_true", help="print every round's times")
    a = ap.parse_args()
    rows = []
    labels = {}
    for d in [int(x) for x in a.dim.split(",")]:
        for n in [int(x) for x in a.n.split(",")]:
            for causal in [m == "causal" for m in a.masking.split(",")]:
                ort_run, labels["ort"] = prepare_ort(n, a.heads, d, causal, a.threads)
                torch_run, labels["torch"] = prepare_torch(n, a.heads, d, causal, a.threads)

                def subq_run(repeats):
                    t, labels["subq"] = bench_subq(a.subq, n, a.heads, d, causal, a.threads, repeats)
                    return t

                runners = [("ort", ort_run), ("torch", torch_run), ("subq", subq_run)]
                times = {"ort": [], "torch": [], "subq": []}
                ratios = []
                for r in range(a.rounds):
                    order = runners[r % 3:] + runners[:r % 3]
                    got = {name: (fn(a.repeat) if fn else None) for name, fn in order}
                    for name, t in got.items():
                        if t:
                            times[name].append(t)
                    peers = [t for t in (got["ort"], got["torch"]) if t]
                    if peers:
                        ratios.append(min(peers) / got["subq"])
                    if a.verbose:
                        cells = " ".join(f"{k} {v * 1e3:.1f} ms" for k, v in got.items() if v)
                        print(f"  round {r + 1} N={n} D={d} {'causal' if causal else 'non-causal'}: {cells}"
                              + (f", best peer/subq {ratios[-1]:.2f}" if peers else ""), file=sys.stderr)
                med = {k: (statistics.median(v) if v else None) for k, v in times.items()}
                rows.append((n, d, causal, med["ort"], med["torch"], med["subq"], statistics.median(ratios) if ratios else None))
                print(f"  done N={n} D={d} {'causal' if causal else 'non-causal'}", file=sys.stderr)
    print(f"threads={a.threads} heads={a.heads} rounds={a.rounds} repeats={a.repeat}")
    for k in ("ort", "torch", "subq"):
        print(f"  {k}: {labels[k]}")
    print(f"{'N':>6} {'D':>4} {'mask':>10} | {'ort ms':>8} {'GF/s':>6} | {'torch ms':>8} {'GF/s':>6} | {'subq ms':>8} {'GF/s':>6} | {'best peer/subq':>14}")
    for n, d, causal, t_ort, t_torch, t_subq, ratio in rows:
        fl = flops(n, a.heads, d, causal)
        def cell(t):
            return (f"{t * 1e3:8.1f} {fl / t / 1e9:6.1f}") if t else f"{'—':>8} {'—':>6}"
        text = f"{ratio:14.2f}" if ratio else f"{'—':>14}"
        print(f"{n:>6} {d:>4} {'causal' if causal else 'non-causal':>10} | {cell(t_ort)} | {cell(t_torch)} | {cell(t_subq)} | {text}")


if __name__ == "__main__":
    main()
