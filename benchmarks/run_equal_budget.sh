#!/usr/bin/env bash
# The equal-budget table of BENCHMARKS.md: every method on each dataset with one budget, seeds
# 0,1,2 (median and spread in each folder's table.md), one job at a time under a lock so that no
# two timings share the 2 cores. Results: benchmarks/results/equal_budget/<dataset>/.
#   bash benchmarks/run_equal_budget.sh [dataset ...]   (default: all, in this order)
set -u
cd "$(dirname "$0")/.."
OUT=benchmarks/results/equal_budget
LOCK=${LOCK:-/tmp/bench.lock}
[ -f benchmarks/data/diabetes_raw.csv ] || python benchmarks/make_user_table.py --out benchmarks/data/diabetes_raw.csv
run() {  # name, then compare's arguments
  local name=$1; shift
  mkdir -p "$OUT/$name"
  echo "== $name: $*"
  flock "$LOCK" jko-flow compare "$@" --out "$OUT/$name" >"$OUT/$name/log.txt" 2>&1
  echo "   exit $? ($(date +%T))"
}
want() { [ $# -eq 0 ] || [[ " $ALL " == *" $1 "* ]]; }
ALL="${*:-diabetes moons gmm16 digits rose checkerboard tree}"
for d in $ALL; do
  case $d in
    diabetes) run diabetes --dataset benchmarks/data/diabetes_raw.csv \
                --methods jko,jko-spline,jko-coupling,cfm,otcfm,realnvp,nsf --budget-seconds 120 --seeds 0 ;;
    moons) run moons --dataset moons --methods jko,jko-spline,cfm,nsf --budget-seconds 60 --seeds 0,1,2 ;;
    gmm16) run gmm16 --dataset gmm16 --methods jko,jko-spline,cfm,nsf --budget-seconds 120 --seeds 0,1,2 ;;
    digits) run digits --dataset digits --methods jko-coupling,cfm,nsf --budget-seconds 120 --seeds 0,1,2 ;;
    rose) run rose --dataset rose --methods jko,jko-spline,cfm --budget-seconds 300 --seeds 0 ;;
    checkerboard) run checkerboard --dataset checkerboard --methods jko,jko-spline,cfm,nsf \
                --budget-seconds 30 --seeds 0,1,2 ;;
    tree) run tree --dataset tree --methods jko-spline --budget-seconds 300 --seeds 0 ;;
    *) echo "unknown dataset $d"; exit 2 ;;
  esac
done
