#!/usr/bin/env bash
# The session-2 recipe (RoPE base 10000, no flat-background stage): the model shipped before
# session 3 and the (c) DINOv2 row of the model card. Run from this folder, with perceive installed.
# Every command is deterministic given its seed; times are for the project's 2-core CPU machine.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# data: the task (full images; crops are the cells the card touches, margin 0) ...
perceive data cards --n 8000 --out data/cards-train --format jpg --margin 0 --no-prompts --seed 0
perceive data cards --n 500 --out data/cards-eval --split eval --format jpg --margin 0 --no-prompts --seed 1
# ... and the reading curriculum: crops around the card at 3x, with more and more context
perceive data reading --n 8000 --out data/j4-train --context 4 --seed 0
perceive data reading --n 200 --out data/j4-eval --context 4 --seed 1 --split eval
perceive data reading --n 8000 --out data/j16-train --context 16 --seed 2
perceive data reading --n 200 --out data/j16-eval --context 16 --seed 3 --split eval
perceive data reading --n 8000 --out data/cells3-train --seed 0
perceive data reading --n 200 --out data/cells3-eval --seed 1 --split eval
# later stages keep a share of the earlier ones
perceive data mix data/mix_j16.json data/j16-train/read.json data/j4-train/read.json:3000
perceive data mix data/mix_region.json data/cards-train/region.json data/cells3-train/read.json:2000 data/j16-train/read.json:1000
perceive data mix data/mix_plain.json data/cards-train/plain.json data/cells3-train/read.json:2000 data/j16-train/read.json:1000

# training: two reading stages, then the full task (b)
perceive train read1_j4.yaml
perceive train read2_j16.yaml
perceive train region.yaml          # -> runs/region/model = models/default
# baselines with the same architecture, curriculum and steps: one view of the full image
perceive train plain_112.yaml       # (a) 112x112, as (b)'s first view
perceive train plain_224.yaml       # (d) 224x224: four times the image tokens of (a)
perceive train reencode.yaml        # (c) a DINOv2 branch on the whole image at 224x224 (fewer steps: see the card)

# evaluation on 500 images with held-out backgrounds
perceive eval eval_region.yaml
perceive eval eval_region_oracle.yaml   # the same model, the region forced: how well it reads
perceive eval eval_plain_112.yaml
perceive eval eval_plain_224.yaml
perceive eval eval_reencode.yaml
perceive eval compare runs/eval-plain-112 runs/eval-region runs/eval-region-oracle runs/eval-reencode runs/eval-plain-224

# ship: the model and the first held-out cards it reads correctly, as examples (replaces models/default)
python ../ship.py runs/region/model runs/eval-region/eval.json data/cards-eval --n 4
