"""Compute targets decide where and how processes run; they never import launchers or flows.

    base.py      the Target and Handle protocols every target implements
    config.py    targets.yaml (one pydantic model per kind) and get_target(name)
    local.py     this machine
    ssh.py       the user's machines over SSH (paramiko), with agent.py running on each
    docker.py    containers on a Docker engine (docker SDK), images.py builds their images
    envbuild.py  building job environments (here, and on SSH hosts through the agent)

This package's face imports nothing: the host agent runs `python -m tfsubmit.targets.agent`
on machines that have only Python 3.
"""
