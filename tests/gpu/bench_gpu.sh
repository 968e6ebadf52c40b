#!/usr/bin/env bash
# GPU benchmark runs behind docs/benchmarks.md. Usage: bash tests/gpu/bench_gpu.sh STAGE [STAGE...]
# Stages: sd1 sd1-probes sd1-compile sd2 sdxl check telemetry, and sd1-opt sd2-opt sdxl-opt options profile sdxl-load
# (the H100 runs behind docs/benchmarks.md); H200: sd1-h200 sd2-h200 sdxl-h200 (diffusers, the diffusers +
# torch.compile peer and sdplay in one run, cold compiles and restarts of each), sdxl-peer-full, sdxl-fp8,
# sd1-autotune, sd1-aot, sd2-aot, sdxl-aot, weights
# (load times), emoji-fp8 (what fp8=static costs the embedded model) and emoji-eval (the embedded model's evaluation
# on the GPU). Needs diffusers (and torchsde; fastapi/uvicorn for sdxl-load) importable;
# writes JSON, markdown and logs under $OUT (default ./outputs/gpu). Each model runs in its own process with its
# own empty compile cache, so its first fast image is a cold compile and its restart check a warm one.
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src"
bench() {  # NAME LIMIT_S ARGS...
  local name=$1 limit=$2; shift 2
  export SDPLAY_CACHE=/tmp/sdplay-cache-$name
  rm -rf "$SDPLAY_CACHE"
  echo "== $name: sdplay bench $*" | tee -a "$OUT/log.txt"
  timeout "$limit" python3 -m sdplay.cli.main bench ${RW---random-weights} --json "$OUT/$name.json" "$@" \
    >"$OUT/$name.md" 2>>"$OUT/log.txt"
  echo "== $name: exit $?" | tee -a "$OUT/log.txt"
  tail -n 12 "$OUT/$name.md"
}
R2="sdplay-fast[regions=BasicTransformerBlock+ResnetBlock2D]" FULL="sdplay-fast[compile=full,dynamic=false]"
FULL8="sdplay-fast[compile=full,dynamic=false,fp8=static]"  # whole UNet, static float8 linear layers
FAST_PROBES="sdplay-fast[compile=none],sdplay-fast[compile=none,fuse_qkv=false],sdplay-fast[host_timesteps=false]"
AUTO="sdplay-fast[compile=full,dynamic=none]"  # whole UNet, static first, one dynamic recompile at a new shape
OPTS="sdplay-fast[fp8=true],sdplay-fast[deepcache=3],$FULL,sdplay-fast[compile=full,dynamic=false,fp8=true]"
PEERS="diffusers,diffusers-compile"
AOT="sdplay-fast[compile=aot]" AOT8="sdplay-fast[compile=aot,fp8=static]"  # whole UNet, saved per input shape
for stage in "$@"; do
  case $stage in
    sd1) bench sd1 420 -m sd-v1-4 --runs 7 --max-batch 8 --large-runs 1 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,$FULL" --restart-variants "sdplay-fast,$FULL" ;;
    sd1-probes) bench sd1-probes 330 -m sd-v1-4 --runs 7 --max-batch 8 --check --restart \
      --variants "diffusers,sdplay-eager,sdplay-fast,$FAST_PROBES" ;;
    sd1-compile) bench sd1-compile 500 -m sd-v1-4 --runs 7 --max-batch 8 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,$R2,$FULL" --restart-variants "sdplay-fast,$R2,$FULL" ;;
    sd1-h200) bench sd1-h200 ${LIMIT:-330} -m sd-v1-4 --runs 5 --max-batch 1 --unet-iters 20 --check \
      --variants "$PEERS,sdplay-eager,sdplay-fast" --restart-variants "diffusers-compile,sdplay-fast" ;;
    sd1-peer) bench sd1-peer ${LIMIT:-200} -m sd-v1-4 --runs 5 --max-batch 1 --unet-iters 20 \
      --variants "$PEERS,sdplay-fast" --restart-variants "diffusers-compile,sdplay-fast" ;;
    probe-aot) timeout ${LIMIT:-500} python3 tests/gpu/probe_aot.py >"$OUT/probe-aot.log" 2>&1
      echo "== probe-aot: exit $?"; cut -c1-400 "$OUT/probe-aot.log" | grep -E '^(\{|== step|compile|single|multi)' ;;
    sd2-h200) bench sd2-h200 ${LIMIT:-330} -m sd-v2-1 --runs 5 --max-batch 1 --unet-iters 20 \
      --variants "$PEERS,sdplay-fast" --restart-variants "diffusers-compile,sdplay-fast" ;;
    sdxl-h200) bench sdxl-h200 ${LIMIT:-480} -m ${SDXL_MODEL:-sdxl-base-1.0} --runs 3 --max-batch 1 --unet-iters 10 \
      --variants "$PEERS,sdplay-fast" --restart-variants "diffusers-compile,sdplay-fast" ;;
    # SDXL: the peer against sdplay's regional default and its whole-UNet compile, in one run
    sdxl-peer-full) bench sdxl-peer-full ${LIMIT:-560} -m sdxl-base-1.0 --runs 3 --max-batch 1 --unet-iters 10 \
      --variants "$PEERS,sdplay-fast,$FULL" --restart-variants "$FULL" ;;
    # SDXL: static float8 linear layers on the whole-UNet compile, against it, the peer and diffusers, exactness
    sdxl-fp8) bench sdxl-fp8 ${LIMIT:-560} -m sdxl-base-1.0 --runs 3 --max-batch 1 --unet-iters 10 --check \
      --variants "$PEERS,sdplay-eager,$FULL,$FULL8" ;;
    # the peer with Inductor's max-autotune beside its default mode and sdplay (its compile may not fit a call)
    sd1-autotune) bench sd1-autotune ${LIMIT:-560} -m sd-v1-4 --runs 5 --max-batch 1 --unet-iters 20 \
      --variants "$PEERS,diffusers-compile[mode=max-autotune],sdplay-fast" ;;
    # precompiled packages (compile=aot): cold compile, then a restart that loads them, against torch.compile's
    sd1-aot) bench sd1-aot ${LIMIT:-330} -m sd-v1-4 --runs 5 --max-batch 1 --unet-iters 20 \
      --variants "$PEERS,sdplay-fast,$AOT" --restart-variants "diffusers-compile,sdplay-fast,$AOT" ;;
    sd2-aot) bench sd2-aot ${LIMIT:-330} -m sd-v2-1 --runs 5 --max-batch 1 --unet-iters 20 \
      --variants "$PEERS,sdplay-fast,$AOT" --restart-variants "sdplay-fast,$AOT" ;;
    sdxl-aot) bench sdxl-aot ${LIMIT:-560} -m sdxl-base-1.0 --runs 3 --max-batch 1 --unet-iters 10 \
      --variants "${SDXL_AOT_VARIANTS:-$PEERS,$AOT,$AOT8}" --restart-variants "$AOT,$AOT8" ;;
    # what static float8 costs the trained embedded model, through the engine's fast path on the GPU
    emoji-fp8) for fo in fp8=off fp8=static; do
        timeout ${LIMIT:-150} python3 -m sdplay.training.evaluate --data "${DATA:-.carry/emoji/emoji64.npz}" --device cuda \
          --backend engine --fast-options "$fo" --json "$OUT/emoji-${fo/=/-}.json" >"$OUT/emoji-${fo/=/-}.log" 2>&1
        echo "== emoji-fp8 $fo: exit $?"; grep -E "^(==|  top-5)" "$OUT/emoji-${fo/=/-}.log" | cut -c1-300; done ;;
    # the shipped embedded model, evaluated on the GPU (needs the data file: sdplay train --prepare, copied to $DATA)
    emoji-eval) timeout ${LIMIT:-200} python3 -m sdplay.training.evaluate --data "${DATA:-.carry/emoji/emoji64.npz}" \
      --device cuda --backend diffusers --json "$OUT/emoji-eval.json" --grid "$OUT/emoji-grid.png" >"$OUT/emoji-eval.log" 2>&1
      echo "== emoji-eval: exit $?"; grep -E "^(==|  top-5)" "$OUT/emoji-eval.log" | cut -c1-300 ;;
    # after `weights`: the same bench on the saved folder (RW= drops --random-weights)
    sdxl-h200-folder) RW= SDXL_MODEL=/tmp/sdplay-weights/sdxl-base-1.0 bash "$0" sdxl-h200 ;;
    # the random weights saved once in both layouts, then sdplay's loader (cold and warm page cache, a fresh
    # process's first load) against diffusers' from_pretrained / from_single_file on the same files
    weights) timeout ${LIMIT:-300} python3 benchmarks/weights_loading.py --model ${WEIGHTS_MODEL:-sdxl-base-1.0} \
      --out /tmp/sdplay-weights --runs 2 --json "$OUT/weights.json" >"$OUT/weights.log" 2>&1
      echo "== weights: exit $?"; cut -c1-400 "$OUT/weights.log" | grep -E "^(sd|###|\||- |.*Error)" | tail -n 45 ;;
    sd2) bench sd2 235 -m sd-v2-1 --runs 5 --max-batch 4 --large-runs 1 --check --restart-variants sdplay-fast ;;
    sdxl) bench sdxl 300 -m sdxl-base-1.0 --runs 3 --max-batch 2 --large-runs 1 --unet-iters 20 --check \
      --restart-variants sdplay-fast ;;
    sd2-fast) bench sd2-fast 150 -m sd-v2-1 --runs 5 --max-batch 4 --large-runs 1 --variants sdplay-fast --restart ;;
    sdxl-fast) bench sdxl-fast 130 -m sdxl-base-1.0 --runs 3 --max-batch 2 --large-runs 1 --unet-iters 20 \
      --variants sdplay-fast --restart ;;
    sd1-opt) bench sd1-opt 560 -m sd-v1-4 --runs 7 --max-batch 8 --large-runs 1 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,$OPTS" --restart-variants "$FULL" ;;
    sd2-opt) bench sd2-opt 500 -m sd-v2-1 --runs 5 --max-batch 4 --large-runs 1 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,$AUTO,sdplay-fast[deepcache=3]" --restart-variants "$AUTO" ;;
    sdxl-opt) bench sdxl-opt 560 -m sdxl-base-1.0 --runs 3 --max-batch 2 --large-runs 1 --unet-iters 20 --check \
      --variants "diffusers,sdplay-eager,sdplay-fast,sdplay-fast[vae_dtype=bfloat16],sdplay-fast[vae=compile,vae_dtype=bfloat16],sdplay-fast[fp8=true],sdplay-fast[deepcache=3]" \
      ;;
    sdxl-full) bench sdxl-full 480 -m sdxl-base-1.0 --runs 3 --max-batch 2 --large-runs 1 --unet-iters 20 --check \
      --variants "sdplay-eager,sdplay-fast,$AUTO" --restart-variants "$AUTO" ;;
    options) SDPLAY_CACHE=/tmp/sdplay-cache-sd1 timeout 200 python3 tests/gpu/check_options.py sd-v1-4 >"$OUT/options.log" 2>&1
      echo "== options: exit $?"; grep -E "PASS|FAIL|fp8 vs|Error" "$OUT/options.log" | tail -n 8 ;;
    profile) SDPLAY_CACHE=/tmp/sdplay-cache-sd1-opt timeout 150 python3 tests/gpu/profile_host.py "${PROFILE_MODEL:-sd-v1-4}" \
      >"$OUT/profile.txt" 2>&1; echo "== profile: exit $?"; head -c 6000 "$OUT/profile.txt" ;;
    sdxl-load) export SDPLAY_CACHE=/tmp/sdplay-cache-sdxl-load  # MLPerf's setting: 1024x1024, 20 steps Euler, 8 clients
      load() { local label=$1 limit=$2; shift 2
        SDPLAY_FAST=${FAST_OPTS:-} timeout "$limit" python3 benchmarks/server_batching.py --random-weights --model sdxl-base-1.0 \
          --size 1024 --steps 20 --sampler Euler --clients 8 --requests 32 --warmup-requests 16 --window-ms 100 \
          --label "$label" --json "$OUT/sdxl-load-$label.json" "$@" >"$OUT/sdxl-load-$label.log" 2>&1
        echo "== sdxl-load $label: exit $?"; grep -E "^\{|best" "$OUT/sdxl-load-$label.log"; }
      [ "${LOAD_DEFAULT:-1}" = 1 ] && load default 330 --batches 1,2,4,8
      [ "${LOAD_REUSE:-1}" = 1 ] && FAST_OPTS=deepcache=3 load deepcache3 200 --batches 1,8
      [ "${LOAD_FULL:-0}" = 1 ] && FAST_OPTS=compile=full,dynamic=false load full 200 --batches 1
      [ "${LOAD_FP8:-0}" = 1 ] && FAST_OPTS=compile=full,dynamic=false,fp8=static load full-fp8 230 --batches 1
      true ;;
    check) SDPLAY_CACHE=/tmp/sdplay-cache-sd1 timeout 300 python3 tests/gpu/check_fastpath.py sd-v1-4 2>&1 | grep -v float32 | tail -n 5 ;;
    telemetry) SDPLAY_CACHE=/tmp/sdplay-cache-sd1 timeout 150 python3 tests/gpu/check_telemetry.py >"$OUT/telemetry.log" 2>&1
      echo "== telemetry: exit $?"; tail -n 15 "$OUT/telemetry.log" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
