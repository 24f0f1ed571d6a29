"""Records the argv and selected environment it was started with."""
import json
import os
import sys
from pathlib import Path

Path("outputs").mkdir(exist_ok=True)
seen = {"argv": sys.argv[1:], "MY_SETTING": os.environ.get("MY_SETTING")}
Path("outputs/seen.json").write_text(json.dumps(seen))
print(json.dumps(seen), flush=True)
