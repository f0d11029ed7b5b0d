#!/usr/bin/env bash
# Step 1 of the walkthrough: listen for the cluster's output and print each window.
exec data_receiver --ponythreads=1 --ponynoblock --listen 127.0.0.1:7002 --framed "$@"
