#!/usr/bin/env bash
# GPU benchmark runs behind docs/benchmarks.md. Usage: bash tests/gpu/bench_gpu.sh STAGE [STAGE...]
# Stages: sd1 sd1-probes sd1-compile sd2 sdxl check telemetry (the runs behind docs/benchmarks.md). Needs diffusers (and torchsde) importable;
# writes JSON, markdown and logs under $OUT (default ./outputs/gpu). Each model runs in its own process with its
# own empty compile cache, so its first fast image is a cold compile and its restart check a warm one.
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src"
bench() {  # NAME LIMIT_S ARGS...
  local name=$1 limit=$2; shift 2
  export SDPLAY_CACHE=/tmp/sdplay-cache-$name
  rm -rf "$SDPLAY_CACHE"
  echo "== $name: sdplay bench $*" | tee -a "$OUT/log.txt"
  timeout "$limit" python3 -m sdplay.cli.main bench --random-weights --json "$OUT/$name.json" "$@" \
    >"$OUT/$name.md" 2>>"$OUT/log.txt"
  echo "== $name: exit $?" | tee -a "$OUT/log.txt"
  tail -n 12 "$OUT/$name.md"
}
R2="sdplay-fast[regions=BasicTransformerBlock+ResnetBlock2D]" FULL="sdplay-fast[compile=full,dynamic=false]"
FAST_PROBES="sdplay-fast[compile=none],sdplay-fast[compile=none,fuse_qkv=false],sdplay-fast[host_timesteps=false]"
for stage in "$@"; do
  case $stage in
    sd1) bench sd1 420 -m sd-v1-4 --runs 7 --max-batch 8 --large-runs 1 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,$FULL" --restart-variants "sdplay-fast,$FULL" ;;
    sd1-probes) bench sd1-probes 330 -m sd-v1-4 --runs 7 --max-batch 8 --check --restart \
      --variants "diffusers,sdplay-eager,sdplay-fast,$FAST_PROBES" ;;
    sd1-compile) bench sd1-compile 500 -m sd-v1-4 --runs 7 --max-batch 8 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,$R2,$FULL" --restart-variants "sdplay-fast,$R2,$FULL" ;;
    sd2) bench sd2 235 -m sd-v2-1 --runs 5 --max-batch 4 --large-runs 1 --check --restart-variants sdplay-fast ;;
    sdxl) bench sdxl 300 -m sdxl-base-1.0 --runs 3 --max-batch 2 --large-runs 1 --unet-iters 20 --check \
      --restart-variants sdplay-fast ;;
    sd2-fast) bench sd2-fast 150 -m sd-v2-1 --runs 5 --max-batch 4 --large-runs 1 --variants sdplay-fast --restart ;;
    sdxl-fast) bench sdxl-fast 130 -m sdxl-base-1.0 --runs 3 --max-batch 2 --large-runs 1 --unet-iters 20 \
      --variants sdplay-fast --restart ;;
    check) SDPLAY_CACHE=/tmp/sdplay-cache-sd1 timeout 60 python3 tests/gpu/check_fastpath.py sd-v1-4 2>&1 | tail -n 5 ;;
    telemetry) SDPLAY_CACHE=/tmp/sdplay-cache-sd1 timeout 150 python3 tests/gpu/check_telemetry.py >"$OUT/telemetry.log" 2>&1
      echo "== telemetry: exit $?"; tail -n 15 "$OUT/telemetry.log" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
