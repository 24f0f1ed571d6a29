"""Says whether it got the secret API_TOKEN, without ever printing it."""
import hashlib
import os

token = os.environ.get("API_TOKEN", "")
print(f"token sha256 {hashlib.sha256(token.encode()).hexdigest()[:16]}", flush=True)
