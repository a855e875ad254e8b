#!/usr/bin/env bash
# Measures what each build setting is worth for the numeric kernels: the same `subq peak` and
# `subq bench` (flash, N=2048, H=8, D=64, one thread) built five ways.
#   1. SUBQ_TARGET_CPU=none                        -O, no target CPU (SSE2, fmaf calls)
#   2. SUBQ_TARGET_CPU=default SUBQ_SAFETY_CHECKS=1 AVX2+FMA, -O with bounds and exclusivity checks
#   3. SUBQ_TARGET_CPU=default                     AVX2+FMA, -Ounchecked, exclusivity unchecked
#   4. SUBQ_TARGET_CPU=native SUBQ_SAFETY_CHECKS=1 build machine (AVX-512), checks kept
#   5. SUBQ_TARGET_CPU=native                      build machine, -Ounchecked, exclusivity unchecked
# Each variant builds into its own .build-flags-* folder (gitignored). Run on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-2048}
variants=("none:0" "default:1" "default:0" "native:1" "native:0")
for v in "${variants[@]}"; do
  cpu=${v%%:*}; checks=${v##*:}
  dir=".build-flags-$cpu-$checks"
  SUBQ_TARGET_CPU=$cpu SUBQ_SAFETY_CHECKS=$checks swift build -c release --scratch-path "$dir" --product subq >/dev/null 2>&1
  echo "== SUBQ_TARGET_CPU=$cpu SUBQ_SAFETY_CHECKS=$checks"
  "$dir/release/subq" peak | sed -n '1p;3p'
  "$dir/release/subq" bench --n "$n" --threads 1 --repeat 3 2>/dev/null | tail -1 | awk '{print "flash N='"$n"' 1 thread: " $2 " " $3 " median, " $8 " GFLOP/s"}'
done
