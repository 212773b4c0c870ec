"""A stand-in training job for the example config: reads the trigger context and "trains"."""

import json
import os
import sys
import time

with open(os.environ["TRIGGERD_TRIGGER_FILE"], encoding="utf-8") as fh:
    ctx = json.load(fh)
model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "?"
print(f"retraining {model}: trigger {ctx['trigger_id']} ({ctx['reason']}), "
      f"{len(ctx['events'])} event(s)")
time.sleep(1)
print("done")
