#!/usr/bin/env bash
# Train the shipped sdplay-emoji weights from scratch on one CUDA GPU, evaluate them, pack the model.
#
# Run from the repository root, with diffusers importable and the data file built by
# `sdplay train --prepare` (copied to $DATA):
#   DATA=.carry/emoji/emoji64.npz OUT=out bash scripts/train_emoji_gpu.sh [more `sdplay train` flags]
# MINUTES (13) of training, then about a minute of evaluation: measured in docs/emoji-model.md.
# RESUME=1 with the same RUN folder carries on a stopped run from its checkpoint; STOP_AFTER=SECONDS stops
# the training there (as Ctrl-C does: checkpoint written, exit 0), for machines that limit one command's
# time: `STOP_AFTER=540 bash ...` then `RESUME=1 bash ...` end with the weights of one unbroken run.
# VECTORS=minilm96.npy first runs the word-embedding test below. The trained folder comes back as $OUT/model.tar.* (15 MB
# pieces): `cat model.tar.* | tar -x`.
set -euo pipefail
DATA=${DATA:-.carry/emoji/emoji64.npz}
OUT=${OUT:-runs/gpu-out}
RUN=${RUN:-/tmp/emoji-run}
MINUTES=${MINUTES:-13}
# The shipped recipe; flags given to the script come after these and override them.
RECIPE=${RECIPE:---batch-size 512 --vae-steps 1600 --lr 5e-4 --warmup 200 --augment 48 --text-steps 1500 --text-weight 0.1}
DEVICE=${DEVICE:-cuda}
EVAL_N=${EVAL_N:-256}
HELDOUT_N=${HELDOUT_N:-1000}  # the held-out prompts (src/sdplay/training/heldout.tsv; 1000 = all)
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src
mkdir -p "$OUT"
python3 -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "diffusers", diffusers.__version__,
  "transformers", transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'

# 0. (VECTORS=file.npy) Do pretrained word vectors help the text encoder? A text-only test picks the token
#    embedding: learned from scratch, or those vectors, frozen or trained (scripts/ablate_word_embedding.py).
if [ -n "${VECTORS:-}" ] && python3 scripts/ablate_word_embedding.py --vectors "$VECTORS" --data "$DATA" \
    --json "$OUT/ablation.json" --steps "${ABLATE_STEPS:-800}"; then
  case $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["decision"])' "$OUT/ablation.json") in
    minilm-frozen) set -- "$@" --token-embedding "$VECTORS" --freeze-token-embedding ;;
    minilm-trained) set -- "$@" --token-embedding "$VECTORS" ;;
  esac
fi

# 1. Train (VAE, naming, then UNet + text encoder), shortened to end within $MINUTES; RESUME=1 carries on.
rc=0
# shellcheck disable=SC2086
${STOP_AFTER:+timeout -s INT -k 120 "$STOP_AFTER"} python3 -m sdplay.cli.train --data "$DATA" --out "$RUN" \
  --device "$DEVICE" --max-minutes "$MINUTES" ${RESUME:+--resume} $RECIPE "$@" || rc=$?
if [ -n "${STOP_AFTER:-}" ] && [ "$rc" = 124 ]; then
  echo "stopped after $STOP_AFTER s with a checkpoint in $RUN: carry on with RESUME=1 (same RUN)"
  exit 0
fi
[ "$rc" = 0 ] || exit "$rc"

# 2. Pack the model folder for the trip back (files of at most 15 MB), before anything else can fail.
tar -C "$RUN" -cf - model | split -b 15M - "$OUT/model.tar."

# 3. Retrieval accuracy at the default settings on training captions and held-out prompts (with the sample
#    grid), then (SWEEP=1) a small sweep.
python3 -m sdplay.training.evaluate --model "$RUN/model" --data "$DATA" --device "$DEVICE" --backend diffusers \
  -n "$EVAL_N" --heldout-n "$HELDOUT_N" --json "$OUT/eval.json" --grid "$OUT/grid.png"
[ "${SWEEP:-0}" = 1 ] && for setting in "--guidance 2" "--guidance 3" "--guidance 6" "--steps 10" "--steps 15" "--sampler Euler"; do
  echo "== $setting"
  # shellcheck disable=SC2086
  python3 -m sdplay.training.evaluate --model "$RUN/model" --data "$DATA" --device "$DEVICE" --backend diffusers \
    -n "$EVAL_N" $setting | grep top-1 || true
done
ls -la "$OUT"
