"""The resident host agent: one Python process per kept SSH connection that runs tfsubmit's
commands on the host by forking, so a command costs no sshd session, no shell and no
Python start (about 45 ms of a host's CPU each, two or more per host and submission).

Started by the SSH pool (`sshpoold.py`) over one channel of a kept connection, through the
pre-flight guard like every other command (`GUARD ... serve`): it runs only when the workdir
is the login user's alone and the runtime hashes to this tfsubmit's code. It then imports
every module the commands use, listens on the host's loopback on a free port, prints one
line `{"port": P, "token": T, "pid": PID}` and serves until its channel ends (the
connection closed, or the pool gone), which its standard input tells. The pool keeps one
per connection and command that starts it (a workdir and a tfsubmit version).

One TCP connection per command, reached by the pool through the SSH connection (a
`direct-tcpip` channel: sshd connects, nothing is forked). The pool sends one JSON line
{"token", "argv", "env", "combine"}, and waits for one keep-alive frame: the command is
taken (an agent killed a moment ago may still complete a connection). A wrong token gets
the connection closed (a 128-bit secret only
the pool and this process know: any user of the host may connect to a loopback port). The
rest of what arrives is the command's standard input (EOF = the end); what goes back are
the frames of `sshpool.py` (o stdout, e stderr, k keep-alive, x exit status), so the pool
relays them as they are. `argv` is what follows `python -S` in the command it stands for:
`-c SOURCE ARGS...` (the guard) or `-m tfsubmit.targets.agent COMMAND ARGS...`, and
`combine` merges its stderr into stdout (as a channel's `set_combine_stderr`); both run in
a fork of this process, with `env` added to its environment. A task's keeper (`agent run`)
forked here has this process's environment, not its run's marker: it registers itself
where the run's `ps` looks (agent.py).

Standard library only, like agent.py.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import select
import socket
import struct
import sys

HEADER = struct.Struct(">cI")  # as sshpool.HEADER
KEEPALIVE_SECONDS = 2.0
# (runtime, its hash) -> what the guard that started this agent saw of the runtime's files
# when it hashed them (path, inode, size, mtime, ctime): the guard, run again in a fork of
# this process, hashes them again only if they changed (git's index does the same)
VERIFIED: dict[tuple[str, str], list] = {}


def serve(verified: dict | None = None) -> int:
    VERIFIED.update(verified or {})
    _preload()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
    except OSError as exc:
        print(json.dumps({"refused": f"cannot listen on the host's loopback: {exc}"}),
              flush=True)
        return 0
    token = secrets.token_hex(16)
    print(json.dumps({"port": listener.getsockname()[1], "token": token, "pid": os.getpid()}),
          flush=True)
    while True:
        ready, _, _ = select.select([listener, 0], [], [], 5.0)
        _reap()
        if 0 in ready and not os.read(0, 4096):
            return 0  # the channel that started it ended: the connection is gone
        if listener in ready:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            if os.fork() == 0:
                listener.close()
                code = 1
                try:
                    code = _command(conn, token)
                finally:
                    os._exit(code)
            conn.close()


def _preload() -> None:
    """What the commands import, imported once here instead of in every fork."""
    import ctypes  # noqa: F401 (a keeper becomes a subreaper with it)

    import tfsubmit.spec.environment  # noqa: F401
    import tfsubmit.store.layout  # noqa: F401
    import tfsubmit.store.objects  # noqa: F401
    import tfsubmit.store.snapshots  # noqa: F401
    import tfsubmit.system.processes  # noqa: F401
    import tfsubmit.targets.agent  # noqa: F401
    import tfsubmit.targets.envbuild  # noqa: F401


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _read_line(conn: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
        if len(data) > 1 << 20:
            return b"", b""
    line, _, rest = data.partition(b"\n")
    return line, rest


def _command(conn: socket.socket, token: str) -> int:
    """One command (in a fork of the agent): check the token, run it, relay it."""
    devnull = os.open(os.devnull, os.O_RDWR)  # the agent's channel is not this command's:
    for fd in (0, 1, 2):  # a task running for days must not hold it open
        os.dup2(devnull, fd)
    os.close(devnull)
    conn.settimeout(30)
    line, rest = _read_line(conn)
    try:
        request = json.loads(line)
        ok = hmac.compare_digest(str(request.get("token", "")), token)
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        conn.close()
        return 1
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(HEADER.pack(b"k", 0))  # taken: the pool answers its client only now
    conn.settimeout(None)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        conn.close()
        os.dup2(in_r, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w if request.get("combine") else err_w, 2)
        for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
            os.close(fd)
        os._exit(_run(request["argv"], request.get("env") or {}))
    for fd in (in_r, out_w, err_w):
        os.close(fd)
    return _relay(conn, pid, rest, in_w, out_r, err_r)


def _run(argv: list[str], env: dict[str, str]) -> int:
    """The command, in this process (fds 0, 1 and 2 are its pipes)."""
    os.environ.update(env)
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    code: object = 0
    try:
        if argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<tfsubmit-guard>", "exec"), {"__name__": "__main__"})  # noqa: S102
        elif argv[:2] == ["-m", "tfsubmit.targets.agent"]:
            from tfsubmit.targets.agent import main

            code = main(argv[2:])
        else:
            print(f"tfsubmit agent: cannot run {argv[:2]}", file=sys.stderr)
            code = 2
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 (as Python would: the traceback, exit code 1)
        import traceback

        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    sys.stderr.flush()
    return 1


def _relay(conn: socket.socket, pid: int, stdin: bytes, in_w: int, out_r: int,
           err_r: int) -> int:
    """Standard input from the connection to the command; its output as frames back; its
    exit status once its output has ended and it has exited. What one wake-up brings goes
    out in one write (small writes in a row wait for acknowledgements). A connection gone
    (a frame, the keep-alive included, that cannot be sent) closes the command's output
    pipes, as sshd does when a channel closes."""
    sock = conn.fileno()
    try:
        exited = os.pidfd_open(pid)  # readable once the command has exited (Linux 5.3)
    except (AttributeError, OSError):
        exited = -1
    pending = bytearray(stdin)
    reading_in = True
    outputs = {out_r: b"o", err_r: b"e"}
    alive = True
    status: int | None = None
    while outputs or status is None:
        readers = list(outputs)
        if reading_in and not pending:
            readers.append(sock)
        if exited >= 0 and status is None:
            readers.append(exited)
        writers = [in_w] if pending and in_w >= 0 else []
        wait = KEEPALIVE_SECONDS if outputs or exited >= 0 else 0.05
        ready_r, ready_w, _ = select.select(readers, writers, [], wait)
        frames = bytearray()
        if in_w in ready_w:
            try:
                del pending[:os.write(in_w, pending)]
            except OSError:  # the command closed its stdin: drop the rest
                pending.clear()
                reading_in = False
            if not pending and not reading_in and in_w >= 0:
                os.close(in_w)
                in_w = -1
        if sock in ready_r:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if data:
                pending += data
            else:
                reading_in = False
                if not pending and in_w >= 0:
                    os.close(in_w)
                    in_w = -1
        for fd in [fd for fd in outputs if fd in ready_r]:
            data = os.read(fd, 65536)
            if data:
                frames += HEADER.pack(outputs[fd], len(data)) + data
            else:
                os.close(fd)
                del outputs[fd]
        if status is None and (exited in ready_r or exited < 0):
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(raw)
                status = 128 - code if code < 0 else code
        if not ready_r and not ready_w and outputs:
            frames += HEADER.pack(b"k", 0)
        if status is not None and not outputs:
            frames += HEADER.pack(b"x", 4) + struct.pack(">i", status)
        if frames and alive:
            try:
                conn.sendall(frames)
            except OSError:
                alive = False
        if not alive and outputs:
            for fd in outputs:
                os.close(fd)
            outputs = {}
    if in_w >= 0:
        os.close(in_w)
    if exited >= 0:
        os.close(exited)
    conn.close()
    return 0
