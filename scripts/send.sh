#!/usr/bin/env bash
# Step 4: send 1..100, ten values every 100 ms (pass --messages N to send more).
exec sender --host 127.0.0.1:7010 --batch-size 10 --interval 100_000_000 \
  --ponythreads=1 --binary --msg-size 12 --no-write --u64 --messages 100 "$@"
