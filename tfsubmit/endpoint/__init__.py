"""What runs where an endpoint serves, in its inference environment: the server process
(server.py: Starlette under uvicorn) and its supervisor (supervisor.py: standard library).
Deploying, updating and deleting endpoints is tfsubmit/serving/'s."""
