# The demo's main job: a script that reports progress while it works, as a Cronium job would.
import json
import os
import sys
import time

print(f"job {os.environ.get('CRONIUM_EXECUTION_ID')} running as uid {os.getuid()}", flush=True)
for step in range(1, 6):
    print(f"step {step}/5: processing batch {step}", flush=True)
    time.sleep(0.6)
print("warning: batch 4 had 2 retries", file=sys.stderr, flush=True)
print(json.dumps({"processed": 5, "ok": True}))
