#!/usr/bin/env bash
# Step 5: ask the cluster to drain and stop; both machida processes exit 0.
exec cluster_shutdown 127.0.0.1:5050 "$@"
