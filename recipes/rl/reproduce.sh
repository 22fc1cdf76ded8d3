#!/usr/bin/env bash
# Where to look, from the answer alone (docs/how-to/train-with-rewards.md): forget models/default's
# cell readout, then GRPO with the exact-match and format rewards; crop IoU is measured, not rewarded.
# Run from this folder with perceive[rl] installed. Times: the project's 2-core CPU.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# prompts (the first 2000 images of models/default's own training set: answers used, spans not) and
# 500 held-out cards on a seed no earlier choice was made on
perceive data cards --n 2000 --out data/cards-train --format jpg --margin 0 --no-prompts --seed 0
perceive data cards --n 500 --out data/cards-eval --split eval --format jpg --margin 0 --no-prompts --seed 3
# a dev set (seed 4) for the curves during training: the held-out set above decides nothing
perceive data cards --n 200 --out data/cards-dev --split eval --format jpg --margin 0 --no-prompts --seed 4
python cold_start.py ../../models/default runs/cold_start
perceive eval eval_cold_start.yaml
perceive train grpo_where.yaml
perceive train plot runs/grpo_where
perceive eval eval_grpo_where.yaml
# the comparison: supervised training of the cold start on the same images with their spans
perceive train sft_compare.yaml
perceive eval eval_sft_compare.yaml
perceive eval compare runs/eval-cold-start runs/eval-grpo-where runs/eval-sft-compare
