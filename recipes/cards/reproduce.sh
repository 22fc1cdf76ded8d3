#!/usr/bin/env bash
# Reproduce models/default from scratch (run from this folder, with perceive installed), and the
# baselines (a), (c) and (d) of its model card (docs/models/default.md).
# Every command is deterministic given its seed; times are for the project's 2-core CPU machine.
# The configs share their common parts through `extends:` (base*.yaml). Runs off this chain
# (earlier sessions, variants, stopped runs) are in git history; NOTES.md and the model card
# keep their results.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# data: the task on photos (crops are the cells the card touches, margin 0) ...
perceive data cards --n 8000 --out data/cards-train --format jpg --margin 0 --no-prompts --seed 0
perceive data cards --n 500 --out data/cards-eval --split eval --format jpg --margin 0 --no-prompts --seed 1
# ... the same task on flat single-colour backgrounds (the card is the only thing to find) ...
perceive data cards --n 6000 --out data/flat-train --split flat --format jpg --margin 0 --no-prompts --seed 5
perceive data cards --n 300 --out data/flat-eval --split flat --format jpg --margin 0 --no-prompts --seed 6
# ... and reading: crops around the card at 3x with 0-4 px of context
perceive data reading --n 8000 --out data/j4-train --context 4 --seed 0
perceive data reading --n 200 --out data/j4-eval --context 4 --seed 1 --split eval
# the last stage keeps localisation-only items and a share of the flat task
perceive data mix data/mix_joint.json data/cards-train/region.json data/cards-train/locate.json:3000 data/flat-train/region.json:1500
# stage 6 (session 5): more photos, each background jittered (these images: (a)'s stage 6) ...
perceive data cards --n 9000 --out data/wide-train --split train_wide --augment --format jpg --margin 0 --no-prompts --seed 7
perceive data mix data/mix_wide6_plain.json data/wide-train/plain.json data/cards-train/plain.json:6000
# ... and light card-sized blobs painted under the card (hard negatives), plus a share of the stage-3 images
perceive data cards --n 9000 --out data/wd-train --split train_wide --augment --distractors --format jpg --margin 0 --no-prompts --seed 8
perceive data mix data/mix_wd6.json data/wd-train/region.json data/wd-train/locate.json:3000 data/cards-train/region.json:3000
# stage 7 (session 6): 18000 fresh images made the same way; stage 8 revisits stage 6's
perceive data cards --n 9000 --out data/wd2-train --split train_wide --augment --distractors --format jpg --margin 0 --no-prompts --seed 9
perceive data cards --n 9000 --out data/wd3-train --split train_wide --augment --distractors --format jpg --margin 0 --no-prompts --seed 10
perceive data mix data/mix_wd7.json data/wd2-train/region.json data/wd3-train/region.json data/wd2-train/locate.json:3000 data/cards-train/region.json:3000
perceive data mix data/mix_wd8.json data/wd-train/region.json data/wd3-train/region.json:4000 data/wd-train/locate.json:2000 data/cards-train/region.json:2000 --seed 8
# stage 9 (session 7): fresh images, small cards (40-50 px wide) over-sampled; (a)'s images for stages 7-9
perceive data cards --n 9000 --out data/small-train --split train_wide --augment --distractors --card-widths 40 50 --format jpg --margin 0 --no-prompts --seed 11
perceive data cards --n 9000 --out data/wd4-train --split train_wide --augment --distractors --format jpg --margin 0 --no-prompts --seed 12
perceive data mix data/mix_small9.json data/small-train/region.json data/wd4-train/region.json:4000 data/wd4-train/locate.json:2000 data/cards-train/region.json:2000 --seed 11
perceive data mix data/mix_a79_plain.json data/wd2-train/plain.json data/wd3-train/plain.json data/small-train/plain.json data/wd4-train/plain.json data/cards-train/plain.json:4000 --seed 13
# a second held-out set (same four photos, another seed), used for no choice at all
perceive data cards --n 500 --out data/cards-eval2 --split eval --format jpg --margin 0 --no-prompts --seed 2

# training (b): read, then the task on flat backgrounds, then on photos. Stages 1-3 ran with the
# reference's no_grad section (reference_no_grad: true), so the vision tower and embeddings kept
# their random init; stages 4-5 train everything (session 4)
perceive train read1_j4_rope10.yaml   # stage 1, from scratch: read the card (RoPE base 10)
perceive train flat_region.yaml       # stage 2: 112x112 image -> span -> 3x crop -> answer, flat backgrounds
perceive train joint.yaml             # stage 3: the same on photos (the session-3 model)
perceive train joint_all.yaml         # stage 4: stage 3 continued, everything training
perceive train joint_all2.yaml        # stage 5: at a lower learning rate (the session-4 model)
perceive train wd6.yaml               # stage 6: more, jittered backgrounds, distractors (the session-5 model)
perceive train wd7.yaml               # stage 7: fresh images of the same kind, lr 2e-4
OMP_NUM_THREADS=2 perceive train wd8.yaml   # stage 8: lr 1e-4 (the session-6 model)
perceive train small9.yaml            # stage 9: small cards over-sampled -> runs/small9/model = models/default
# baselines from the same stage-1 model with the same steps: one view of the whole image
perceive train plain_112_rope10.yaml  # (a) 112x112, as (b)'s first view (steps of stages 2-3)
perceive train plain_112_all.yaml     # (a) as stage 4
perceive train plain_112_all2.yaml    # (a) as stage 5
perceive train plain_112_all3.yaml    # (a) as stage 6, on its images without distractors
perceive train plain_112_all4.yaml    # (a) as stages 7-9, on their images
perceive train plain_224_rope10.yaml  # (d) 224x224: four times the image tokens of (a)
perceive train plain_224_all.yaml     # (d) as stage 4 (no stage-5 or stage-6 counterpart: see the model card)
# (c) a DINOv2 branch added to the stage-3 model, everything training
perceive train reencode_all.yaml

# evaluation on 500 images with held-out backgrounds: the model card's table
perceive eval eval_small9.yaml
perceive eval eval_small9_oracle.yaml         # the same model, the region forced: how well it reads
perceive eval eval_small9_seed2.yaml          # the second held-out set
perceive eval eval_plain_112_all4.yaml        # (a)
perceive eval eval_reencode_all.yaml          # (c)
perceive eval eval_plain_224_all.yaml         # (d)
perceive eval compare runs/eval-plain-112-all4 runs/eval-small9 runs/eval-small9-oracle runs/eval-small9-seed2 \
  runs/eval-reencode-all runs/eval-plain-224-all
# an earlier stage with the same settings, e.g. stage 8:
#   perceive eval eval_small9.yaml --model runs/wd8/model --set 'name=(b) stage 8' --out runs/eval-wd8

# ship: the model and the first held-out cards it reads correctly, as examples
python ship.py runs/small9/model runs/eval-small9/eval.json data/cards-eval --n 4
