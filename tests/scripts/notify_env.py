"""A --notify command for the tests: appends its TLOG_* environment as one JSON line to the file argv[1]."""

import json
import os
import sys

with open(sys.argv[1], "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("TLOG_")}) + "\n")
