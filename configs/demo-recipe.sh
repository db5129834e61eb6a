#!/usr/bin/env bash
# The demo model's recipe, end to end, with our own code only: synthetic scenes, a random-weight
# base, supervised warm start, GRPO with ASCL and GDQA, export to GGUF, evaluation on the held-out
# scenes. Run from the repository root after `cargo build --release`; about 30 minutes on 2 cores.
# The result replaces demo/anatomy-demo.gguf and demo/anatomy-demo-mmproj.gguf.
set -euo pipefail
A=${ANATOMY:-target/release/anatomy}
OUT=${OUT:-runs/demo}
INSTRUCTION="Answer with the letter of the right option: <think> </think> <answer>LETTER</answer>."

"$A" synth --out "$OUT/data" --count 3000 --seed 1 --size 224 --per-image 2 --balance \
  --forms position,attribute --holdout-fraction 0.1 --instruction "$INSTRUCTION"
"$A" init-base --spec configs/demo-base.toml --template tests/fixtures/qwen2_5_vl/square/model \
  --data "$OUT/data/train.json" --out "$OUT/base"
"$A" train --config configs/demo-sft.toml --set "base=$OUT/base" --set "data=$OUT/data/train.json" \
  --set "image_root=$OUT/data" --set "output_dir=$OUT/sft"
"$A" train --config configs/demo-grpo.toml --set "base=$OUT/base" --set "data=$OUT/data/train.json" \
  --set "image_root=$OUT/data" --set "init=$OUT/sft/$(cat "$OUT/sft/latest")" --set "output_dir=$OUT/grpo"
"$A" export "$OUT/grpo" --out "$OUT/export/anatomy-demo" --quant q8_0
"$A" eval --model "$OUT/export/anatomy-demo.gguf" --mmproj "$OUT/export/anatomy-demo-mmproj.gguf" \
  --data "$OUT/data/holdout.json" --json | tee "$OUT/eval.json"
