# device call 15 (issue 12), prepared 2026-12-02 evening, NOT YET RUN: eyes. The shipped e2 continued on a
# 128x128 corpus with feature masks (eyes, lids, lips, mouth: corpus --feature-masks) weighted in the loss
# (--feature-weight), at two weights, and the `small` preset (4x the Gaussians: 25 per eye opening vs tiny's 7)
# started from scratch on the same corpus, the first link of a chain over later calls (keep:s1).
#   cp training/assets/flexavatar_tiny_corpus.safetensors .devdata/init/e2.safetensors
#   bash dev/probe15.sh            (carry .whl, .devdata/shared and .devdata/init; ~570 s)
# Then on the CPU: python dev/eye_probe.py f1.safetensors f2.safetensors ... --size 128 (docs/TRAINING.md section 3).
source dev/device_env.sh
T0=$(date +%s)
DEMO_END_S=565 COUNT_2D=4000 COUNT_3D=1000 CORPUS_EXTRA="--image-size 128 --feature-masks" \
RECIPES='f1 tiny .devdata/init/e2.safetensors 3e-4 120 --rest-pairs --difference-weight 80 --feature-weight 60
f2 tiny .devdata/init/e2.safetensors 3e-4 120 --rest-pairs --difference-weight 80 --feature-weight 200
s1 small scratch 1e-3 30 --rest-pairs --difference-weight 80 --feature-weight 60' bash dev/demo_h200.sh 2>&1 | tail -30
echo "[probe15 $(( $(date +%s) - T0 ))s] done"
