#!/usr/bin/env bash
# models/toolcall: the shipped default model (models/default) taught to call its zoom tool in the
# hermes_json protocol. Run from recipes/toolcall with perceive installed; every command is seeded.
set -euo pipefail
cd "$(dirname "$0")"
# data: 5000 fresh training cards of the kind models/default's last stages saw (train_wide photos,
# jittered, distractors), and the held-out set (the same 500 cards as models/default's first set)
perceive data cards --n 5000 --out data/wd-train --split train_wide --augment --distractors --format jpg --margin 0 --no-prompts --seed 21
perceive data cards --n 500 --out data/cards-eval --split eval --format jpg --margin 0 --no-prompts --seed 1
python make_data.py data/wd-train --out data/toolcall-train.json          # the JSON call alone (train.yaml)
python make_data.py data/wd-train --out data/span-train.json --span      # the VPT span, then the call (span.yaml, shipped)
python make_data.py data/cards-eval --out data/toolcall-eval.json
python make_data.py data/cards-eval --out data/span-eval.json --span
# training renders an item exactly as the loop feeds it (prints True, exits 1 otherwise)
python check_render.py data/toolcall-eval.json ../../models/default
python check_render.py data/span-eval.json ../../models/default
OMP_NUM_THREADS=2 perceive train train.yaml   # the JSON call alone: stopped at step 600 (constant box), see the model card
python export_checkpoint.py runs/toolcall/checkpoint-500 runs/model-500
perceive eval eval.yaml --model runs/model-500 --set 'name="hermes_json, the JSON call alone (train.yaml, step 500)"' --out runs/eval-json500
OMP_NUM_THREADS=2 perceive train span.yaml    # stage 1: 1400 steps, batch 16, lr 2e-4 -> runs/span/model
perceive eval eval.yaml --model runs/span/model --set 'name="hermes_json, span then call, stage 1 (span.yaml)"' --out runs/eval-span
# stage 2: 800 more steps on 4000 fresh cards, lr 1.5e-4
perceive data cards --n 4000 --out data/wd2-train --split train_wide --augment --distractors --format jpg --margin 0 --no-prompts --seed 22
python make_data.py data/wd2-train --out data/span2-train.json --span
OMP_NUM_THREADS=2 perceive train span2.yaml   # -> runs/span2/model
perceive eval eval.yaml --model runs/span2/model --out runs/eval-span2   # 0.482
# stage 3 (shipped): 2000 more steps on both fresh sets (9000 cards), lr 1.5e-4
python -c "import json; json.dump(json.load(open('data/span-train.json')) + json.load(open('data/span2-train.json')), open('data/span3-train.json', 'w'))"
OMP_NUM_THREADS=2 perceive train span3.yaml   # -> runs/span3/model
# (span.yaml's `protocol:` is stored in each stage's perceive.json; the shipped model's was written
# by ship.py, as the stages were trained before train configs took `protocol:`)
perceive eval eval.yaml                       # 500 held-out cards through a hermes_json hop -> runs/eval-span3 (0.860)
python ship.py runs/span3/model runs/eval-span3/eval.json data/cards-eval --n 4 --need-answer
