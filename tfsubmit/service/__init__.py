"""What runs beside the pipeline: the embedded Prefect server, the fork server, the runner
that executes one run's flow, the Prefect REST client, and local processes.

    processes.py   /proc facts and terminate-then-kill (standard library only)
    prefect_api.py a small client of the Prefect REST API (a leaf: it starts nothing)
    forkserver.py  a warm process that forks runners; starting a runner for a run
    server.py      the embedded Prefect server: started on demand, reused
    runner.py      the detached process that executes one run's flow (the edge to flows/)
"""
