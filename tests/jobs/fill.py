"""Fills the disk its outputs/ is on, then fails the way a job on a full disk does."""
import sys

print("filling the disk", flush=True)
try:
    with open("outputs/fill.bin", "wb") as handle:
        while True:
            handle.write(bytes(1 << 20))
except OSError as exc:
    print(f"disk full: {exc}", flush=True)
    sys.exit(1)
