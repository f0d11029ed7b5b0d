#!/usr/bin/env bash
# Step 2: the cluster initializer (it owns key 0, the even values, and the source).
exec machida --application-module sequence_window --in 127.0.0.1:7010 \
  --out 127.0.0.1:7002 --metrics 127.0.0.1:5001 --control 127.0.0.1:6000 \
  --data 127.0.0.1:6001 --external 127.0.0.1:5050 --worker-count 2 \
  --cluster-initializer --ponythreads=1 "$@"
