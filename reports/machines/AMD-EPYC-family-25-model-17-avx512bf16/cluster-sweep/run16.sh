#!/bin/bash
# Issue 16 measurement: the same mnist-5k sweep serially (2 threads, one run at a time) and on a local
# Ray instance with one-core runs two at a time. Run from a clone of the committed tree.
cd /tmp/measure
export PYTHONPATH=/tmp/measure
MB="/work/main/.venv/bin/python -m mnist_models"
ARGS="--dataset mnist-5k --models simple deep --variants seed-eager-fp32 tensor-eager-fp32-cl --seeds 1 2 3 --epochs 15 --no-progress"
s=$(date +%s.%N); $MB sweep $ARGS --runs-dir /tmp/measure/serial > serial.log 2>&1; echo "serial rc=$? wall=$(echo "$(date +%s.%N) - $s" | bc)" >> walls.txt
s=$(date +%s.%N); $MB sweep $ARGS --cluster ray --cpus-per-run 1 --runs-dir /tmp/measure/ray > ray.log 2>&1; echo "ray rc=$? wall=$(echo "$(date +%s.%N) - $s" | bc)" >> walls.txt
