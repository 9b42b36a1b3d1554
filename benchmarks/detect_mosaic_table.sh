#!/bin/bash
# The docs/detection.md mosaic table: MoCo v1 / v2 pretraining (150 steps x 128 on a 10k Fashion-MNIST
# subset), then `sslkit eval detect` on random init, a supervised classifier (same images, 75 steps x 128),
# MoCo v1 and MoCo v2, all with the same fine-tuning settings; prints one markdown table.
# usage: benchmarks/detect_mosaic_table.sh [out dir]   (one thread per process; ~20 CPU-minutes)
# The two pretrainings run one after the other, then the four fine-tunings in parallel (as measured in
# docs/detection.md). Pinned so that the table reproduces under today's defaults: FPN head and per-batch
# BN (the default is now the paper's C4), the RPN's old top-k (100 before and after NMS in training, 50 at
# test), fp32 pretraining, and no warm-up for MoCo v2 (the small-image warm-up default came later).
set -euo pipefail
OUT=${1:-runs/detect_table}
export OMP_NUM_THREADS=1
SSL="data.subset=10000 data.batch_size=128 method.queue_size=4096 method.momentum=0.99 trainer.max_steps=150 trainer.threads=1 trainer.precision=32"
MOSAIC="eval.mosaic.canvas=64 eval.mosaic.min_scale=0.25 eval.mosaic.max_scale=0.5 eval.mosaic.max_objects=3 eval.mosaic.train_size=800 eval.mosaic.test_size=100"
DET="eval.steps=50 eval.batch_size=8 eval.lr=0.01 eval.warmup_steps=10 eval.head=fpn eval.bn=train eval.min_size=64 eval.max_size=64 eval.anchor_sizes=[8,16,32,64,128] eval.pre_nms_train=100 eval.proposals=100 eval.pre_nms_test=50 eval.post_nms_test=50 eval.rois_per_image=64 eval.box_head_dim=256 eval.checkpoint_every_steps=25 trainer.threads=1"
sslkit train method=mocov2 $SSL method.temperature=0.3 optim.lr=0.06 optim.warmup_epochs=0 out=$OUT/mocov2
sslkit train method=mocov1 $SSL out=$OUT/mocov1
pids=()
sslkit eval detect $MOSAIC $DET eval.init=random out=$OUT/det_random & pids+=($!)
sslkit eval detect $MOSAIC $DET eval.init=supervised data.subset=10000 eval.supervised_steps=75 \
    eval.supervised_batch_size=128 eval.supervised_lr=0.05 out=$OUT/det_supervised & pids+=($!)
sslkit eval detect $MOSAIC $DET checkpoint=$OUT/mocov1 out=$OUT/det_mocov1 & pids+=($!)
sslkit eval detect $MOSAIC $DET checkpoint=$OUT/mocov2 out=$OUT/det_mocov2 & pids+=($!)
for pid in "${pids[@]}"; do wait "$pid"; done   # set -e: a failed fine-tuning stops the script here
python benchmarks/detect_table.py $OUT/det_random $OUT/det_supervised $OUT/det_mocov1 $OUT/det_mocov2
