#!/usr/bin/env bash
# The equal-budget tables of BENCHMARKS.md s.4 and the checks beside them, one job at a time under
# a lock so that no two timings share the 2 cores. Results: benchmarks/results/equal_budget/<job>/.
#   bash benchmarks/run_equal_budget.sh [job ...]   (default: all, in this order)
# Jobs with --seeds 0,1,2 write the median and spread per method in their table.md.
#   units: the raw diabetes table, the same table standardised by hand, and raw with
#   --no-standardize, at a fixed number of gradient steps (comparable step for step):
#   NLL(raw) - NLL(standardised) should be sum(log std) for every method.
set -u
cd "$(dirname "$0")/.."
OUT=benchmarks/results/equal_budget
LOCK=${LOCK:-/tmp/bench.lock}
[ -f benchmarks/data/diabetes_raw.csv ] || python benchmarks/make_user_table.py --out benchmarks/data/diabetes_raw.csv
run() {  # name, then compare's arguments
  local name=$1; shift
  mkdir -p "$OUT/$name"
  echo "== $name: $* ($(date +%T))"
  flock "$LOCK" jko-flow compare "$@" --out "$OUT/$name" >"$OUT/$name/log.txt" 2>&1
  echo "   exit $? ($(date +%T))"
}
ALL7=jko,jko-spline,jko-coupling,cfm,otcfm,realnvp,nsf
for job in ${*:-diabetes units gmm16 gmm16_jko_ode digits rose checkerboard curve moons tree}; do
  case $job in
    diabetes) run diabetes --dataset benchmarks/data/diabetes_raw.csv --methods $ALL7 --budget-seconds 120 --seeds 0 ;;
    units)
      python - <<'PY'
import numpy as np
x = np.loadtxt("benchmarks/data/diabetes_raw.csv", delimiter=",", skiprows=1)
np.savetxt("benchmarks/data/diabetes_std.csv", (x - x.mean(0)) / x.std(0), delimiter=",", fmt="%.10f")
print("sum log std", float(np.log(x.std(0)).sum()))
PY
      M=jko,jko-spline,jko-coupling,cfm,realnvp,nsf
      run units/raw --dataset benchmarks/data/diabetes_raw.csv --methods $M --steps 300
      run units/std --dataset benchmarks/data/diabetes_std.csv --methods $M --steps 300
      run units/raw_unstandardized --dataset benchmarks/data/diabetes_raw.csv --methods $M --steps 300 --no-standardize ;;
    gmm16) run gmm16 --dataset gmm16 --methods jko,jko-spline,jko-coupling,cfm --budget-seconds 120 --seeds 0,1,2 ;;
    gmm16_lr) run gmm16_lr --dataset gmm16 --methods jko,cfm --budget-seconds 120 --seeds 0,1,2 ;;
    gmm16_revise) run gmm16_revise --dataset gmm16 --methods jko,cfm --budget-seconds 120 --seeds 0,1,2 ;;
    gmm16_silu) run gmm16_silu --dataset gmm16 --methods jko,cfm --budget-seconds 120 --seeds 0,1,2 ;;  # SiLU above d = 3
    gmm16_jko_ode) run gmm16_jko_ode --dataset gmm16 --methods jko --budget-seconds 120 --seeds 0,1,2 ;;
    digits) run digits --dataset digits --methods jko-coupling,cfm,nsf --budget-seconds 120 --seeds 0,1,2 ;;  # 10 min a seed
    rose) run rose --dataset rose --methods jko-spline,cfm,nsf --budget-seconds 300 --seeds 0 ;;
    rose_spline16) run rose_spline16 --dataset rose --methods jko-spline --budget-seconds 300 --seeds 0 ;;
    rose_spline64) run rose_spline64 --dataset rose --methods jko-spline-64 --budget-seconds 300 --seeds 0 ;;
    # JKO-iFlow's own setting for its pictures: 500,000 training points (configs/JKO_rose.yaml, ntr)
    rose_500k) run rose_500k --dataset rose --methods jko-spline-64,jko-spline,cfm,nsf --budget-seconds 300 --seeds 0 --num-train 500000 ;;
    tree_500k) run tree_500k --dataset tree --methods jko-spline-64,jko-spline,cfm,nsf --budget-seconds 300 --seeds 0 --num-train 500000 ;;
    pictures_spline64) run rose_spline64_front --dataset rose --methods jko-spline-64 --budget-seconds 300 --seeds 0
      run tree_spline64_front --dataset tree --methods jko-spline-64 --budget-seconds 300 --seeds 0 ;;
    # jko-spline-64 with step 1's splines on [-3, 3] and blocks that re-plan their length
    pictures_narrow) run tree_spline64_narrow --dataset tree --methods jko-spline-64 --budget-seconds 300 --seeds 0,1
      run rose_spline64_narrow --dataset rose --methods jko-spline-64 --budget-seconds 300 --seeds 0,1 ;;
    # jko-spline-64 with rq_spline's evaluation (1.3x the iterations of normflows' in the same time)
    rose_fast_spline) run rose_fast_spline --dataset rose --methods jko-spline-64 --budget-seconds 300 --seeds 0,1,2 ;;
    moons_fast_spline) run moons_fast_spline --dataset moons --methods jko-spline,cfm,nsf --budget-seconds 60 --seeds 0,1,2 ;;
    tree_fast_spline) run tree_fast_spline --dataset tree --methods jko-spline-64 --budget-seconds 300 --seeds 0,1,2 ;;
    rose_compiled) run rose_compiled --dataset rose --methods jko-spline-64 --budget-seconds 300 --seeds 0,1,2 --compile ;;
    tree_compiled) run tree_compiled --dataset tree --methods jko-spline-64 --budget-seconds 300 --seeds 0,1,2 --compile ;;
    gmm16_compiled) run gmm16_compiled --dataset gmm16 --methods jko,cfm --budget-seconds 120 --seeds 0,1,2 --compile ;;
    gmm16_steps3) run gmm16_steps3 --dataset gmm16 --methods jko,cfm --budget-seconds 120 --seeds 0,1,2 --compile ;;  # 3 RK4 steps per block
    # 200,000 training points for every method: at 20,000 the 3-step jko scores the true NLL on its
    # training points and 0.27 more on test (BENCHMARKS.md s.4.0)
    gmm16_200k) run gmm16_200k --dataset gmm16 --methods jko,cfm --budget-seconds 120 --seeds 0,1,2 --compile --num-train 200000 ;;
    gmm16_mixture) run gmm16_mixture --dataset gmm16 --methods jko-mixture,jko,cfm --budget-seconds 120 --seeds 0,1,2 --compile ;;  # mixture of cluster-conditional JKO flows
    gmm16_mixture_rerun) run gmm16_mixture_rerun --dataset gmm16 --methods jko-mixture --budget-seconds 120 --seeds 0,1,2 --compile ;;  # the final code, jko-mixture alone
    moons_mixture) run moons_mixture --dataset moons --methods jko-mixture,jko-spline --budget-seconds 60 --seeds 0,1,2 ;;
    diabetes_mixture) run diabetes_mixture --dataset benchmarks/data/diabetes_raw.csv --methods jko-mixture,jko --budget-seconds 120 --seeds 0 ;;
    gmm16_eager) run gmm16_eager --dataset gmm16 --methods jko --budget-seconds 120 --seeds 0,1,2 ;;
    moons_compiled) run moons_compiled --dataset moons --methods jko-spline,cfm,nsf --budget-seconds 60 --seeds 0,1,2 --compile ;;
    tree_spline64) run tree_spline64 --dataset tree --methods jko-spline-64 --budget-seconds 300 --seeds 0 ;;
    diabetes_coupling) run diabetes_coupling --dataset benchmarks/data/diabetes_raw.csv --methods jko-coupling --budget-seconds 120 --seeds 0,1,2 ;;
    diabetes_spline) run diabetes_spline --dataset benchmarks/data/diabetes_raw.csv --methods jko-spline --budget-seconds 120 --seeds 0,1,2 ;;
    diabetes_jko) run diabetes_jko --dataset benchmarks/data/diabetes_raw.csv --methods jko --budget-seconds 120 --seeds 0,1,2 ;;
    checkerboard) run checkerboard --dataset checkerboard --methods jko,jko-spline,cfm,nsf --budget-seconds 30 --seeds 0,1,2 ;;
    curve) mkdir -p $OUT/curve; echo "== curve ($(date +%T))"
      flock "$LOCK" python benchmarks/bench_budget_curve.py --dataset moons --methods jko-spline,cfm,nsf \
        --budgets 15 30 60 --out $OUT/curve > $OUT/curve/log.txt 2>&1; echo "   exit $?" ;;
    # the issue's figure: every method (the seven above) at 15 s to 5 min, one compare run per budget
    curve_all) mkdir -p $OUT/curve_all; echo "== curve_all ($(date +%T))"
      flock "$LOCK" python benchmarks/bench_budget_curve.py --dataset moons --methods $ALL7 \
        --budgets 15 30 60 120 300 --out $OUT/curve_all > $OUT/curve_all/log.txt 2>&1; echo "   exit $? ($(date +%T))" ;;
    # jko-spline with step 1's splines on [-3, 3] in 2-D (FIRST_TAIL_BOUND), against its peers
    moons_narrow) run moons_narrow --dataset moons --methods jko-spline,cfm,nsf --budget-seconds 60 --seeds 0,1,2 ;;
    checkerboard_narrow) run checkerboard_narrow --dataset checkerboard --methods jko-spline,cfm,nsf --budget-seconds 30 --seeds 0,1,2 ;;
    moons) run moons --dataset moons --methods jko,jko-spline,cfm,nsf --budget-seconds 60 --seeds 0,1,2 ;;
    # the ODE `jko` rows again with 3 RK4 steps per block (commit 8b95e57), peers in the same run
    checkerboard_steps3) run checkerboard_steps3 --dataset checkerboard --methods jko,jko-spline,cfm,nsf --budget-seconds 30 --seeds 0,1,2 ;;
    moons_steps3) run moons_steps3 --dataset moons --methods jko,jko-spline,cfm,nsf --budget-seconds 60 --seeds 0,1,2 ;;
    diabetes_jko_steps3) run diabetes_jko_steps3 --dataset benchmarks/data/diabetes_raw.csv --methods jko --budget-seconds 120 --seeds 0,1,2 ;;
    # `jko` in 2-D on the exact density of its trained map (RunConfig.density="auto"), 60 s and 300 s
    moons_jko_map) run moons_jko_map --dataset moons --methods jko --budget-seconds 60 --seeds 0,1,2
      run moons_jko_map_300s --dataset moons --methods jko --budget-seconds 300 --seeds 0 ;;
    checkerboard_jko_map) run checkerboard_jko_map --dataset checkerboard --methods jko --budget-seconds 30 --seeds 0,1,2 ;;
    # does the ODE density of d > 3 drift from the trained steps over a long budget? (details.solver_gap)
    gmm16_jko_300s) run gmm16_jko_300s --dataset gmm16 --methods jko --budget-seconds 300 --seeds 0 --compile ;;
    # the same after each step's validation record (and so the steps kept) moved to the ODE density
    gmm16_jko_300s_scored) run gmm16_jko_300s_scored --dataset gmm16 --methods jko --budget-seconds 300 --seeds 0 --compile ;;
    gmm16_jko_scored) run gmm16_jko_scored --dataset gmm16 --methods jko --budget-seconds 120 --seeds 0,1,2 --compile ;;
    # ... and each step's within-step checks as well (a version not kept: 23% fewer iterations)
    gmm16_jko_checks) run gmm16_jko_checks --dataset gmm16 --methods jko --budget-seconds 120 --seeds 0,1,2 --compile ;;
    # ... and the checks on the trained density, rescored on the ODE's only when they stray from it
    gmm16_jko_rechoose) run gmm16_jko_rechoose --dataset gmm16 --methods jko --budget-seconds 120 --seeds 0,1,2 --compile ;;
    # a budget long enough for the 3-step log-det to be exploited; _before: the same with
    # PYTHONPATH on a checkout of 38b6aef (checks and records on the trained density)
    gmm16_jko_600s) run gmm16_jko_600s --dataset gmm16 --methods jko --budget-seconds 600 --seeds 0 --compile ;;
    gmm16_jko_600s_before) run gmm16_jko_600s_before --dataset gmm16 --methods jko --budget-seconds 600 --seeds 0 --compile ;;
    # spline steps conditioned through a table (GridRQSpline); before each, a 40-step warm-up
    # tree_grid_<tag> / rose_grid_<tag>: the same command into its own folder, for a candidate
    # recipe tried as make_grid_step's defaults on a working tree (_mb256, _next, _tv5e6)
    tree_grid|tree_grid_*) run "$job" --dataset tree --methods jko-grid --budget-seconds 300 --seeds 0,1,2 --compile ;;
    rose_grid|rose_grid_*) run "$job" --dataset rose --methods jko-grid --budget-seconds 300 --seeds 0,1,2 --compile ;;
    # the grid steps against the 2-D default (jko-spline) on the short budgets
    moons_grid) run moons_grid --dataset moons --methods jko-spline,jko-grid --budget-seconds 60 --seeds 0,1,2 --compile ;;
    checkerboard_grid) run checkerboard_grid --dataset checkerboard --methods jko-spline,jko-grid --budget-seconds 30 --seeds 0,1,2 --compile ;;
    tree) run tree --dataset tree --methods jko-spline,cfm,nsf --budget-seconds 300 --seeds 0 ;;
    *) echo "unknown job $job"; exit 2 ;;
  esac
done
