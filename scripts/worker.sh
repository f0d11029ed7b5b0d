#!/usr/bin/env bash
# Step 3: the second worker (it owns key 1, the odd values).
exec machida --application-module sequence_window --in 127.0.0.1:7010 \
  --out 127.0.0.1:7002 --metrics 127.0.0.1:5001 --control 127.0.0.1:6000 \
  --external 127.0.0.1:5051 --name worker-2 --ponythreads=1 "$@"
