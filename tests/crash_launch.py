"""Starts ``haasd`` commands for the crash campaign (tests/crash_campaign.py), each a process
of its own that can be made to SIGKILL itself at a chosen point, with no hook in haasd.

Run as ``python crash_launch.py``, it is a *zygote*: it imports haasd once, then reads one
JSON request per line on stdin and answers one JSON line on stdout:

- ``{"op": "start", "argv": [...], "log": FILE, "cwd": DIR, "env": {...}, "kill": {...}}``
  forks a child that runs ``python -m haasd ARGV`` exactly as the command line does
  (:func:`runpy.run_module`), its output appended to ``log``; answer ``{"pid": N}``.
  A restart costs the fork and haasd's own start, not the interpreter's imports (seconds
  on a busy machine): what the campaign kills is the same ``haasd`` process.
- ``{"op": "reap", "pid": N}``: waits for that child; answer ``{"code": exit code}``
  (-9 after a SIGKILL).

``kill`` (optional) says where the child kills itself with SIGKILL, once ``armed`` (a file)
exists — so that the driver's checks after a restart are not cut short. Before dying it
writes ``{"point", "at"}`` to ``mark``. Kinds, by patching functions in the child only:

- ``request``: the ``n``-th token request of ``grant_type`` (``refresh_token`` or
  ``authorization_code``): ``before_send`` (nothing left the process), ``after_send``
  (the whole request written to the socket, no answer read) or ``after_answer`` (the
  answer read, nothing of it written to the store);
- ``commit``: the ``n``-th call of the store's ``method`` (``finish_refresh``: the rotated
  tokens; ``begin_refresh``: the intent), from a timer ``delay`` seconds into the write —
  inside SQLite's statement, its WAL append or sync, or just after it returned;
- ``call``: the ``n``-th call of ``target`` (``module:function``), ``before`` or ``after``
  it — the steps of ``haasd rekey`` and ``haasd restore``; ``os.replace`` onto the store
  is ``os:replace``.
"""

# ruff: noqa: SLF001 - the launcher patches haasd's and httpcore's private functions: the
# points a crash is injected at, with no hook in haasd

from __future__ import annotations

import importlib
import inspect
import json
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

#: PR_SET_PDEATHSIG: a child dies with the zygote, so nothing outlives a driver that died
PR_SET_PDEATHSIG = 1


class Trigger:
    """Counts calls once armed; the ``n``-th one kills the process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.n = int(spec.get("n", 1))
        self.seen = 0

    def armed(self) -> bool:
        return os.path.exists(self.spec["armed"])

    def due(self) -> bool:
        """Count one call (if armed): is it the one to die at?"""
        if not self.armed():
            return False
        self.seen += 1
        return self.seen == self.n

    def die(self, point: str) -> None:
        """Note where, then SIGKILL this process: no cleanup, as a crash."""
        note = json.dumps({"point": point, "at": time.time()}).encode()
        fd = os.open(self.spec["mark"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, note)
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def patch_request(trigger: Trigger) -> None:
    from haasd.authclient import AuthClient

    grant_type, when = trigger.spec["grant_type"], trigger.spec["when"]
    original = AuthClient._send
    after_send: list[bool] = [False]

    async def send(self: Any, fields: dict[str, str], url: str, *, form: bool) -> Any:
        if fields.get("grant_type") != grant_type or not trigger.due():
            return await original(self, fields, url, form=form)
        if when == "before_send":
            trigger.die("before_send")
        after_send[0] = when == "after_send"
        reply = await original(self, fields, url, form=form)
        trigger.die("after_answer")
        return reply

    AuthClient._send = send  # type: ignore[method-assign]
    if when != "after_send":
        return
    from httpcore._async.http11 import AsyncHTTP11Connection

    receive = AsyncHTTP11Connection._receive_response_headers

    async def receive_headers(self: Any, *args: Any, **kwargs: Any) -> Any:
        if after_send[0]:  # the request's last byte is in the socket; the answer unread
            trigger.die("after_send")
        return await receive(self, *args, **kwargs)

    AsyncHTTP11Connection._receive_response_headers = receive_headers  # type: ignore[method-assign]


def patch_commit(trigger: Trigger) -> None:
    from haasd.store import Store

    method = trigger.spec["method"]
    original = getattr(Store, method)

    async def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not trigger.due():
            return await original(self, *args, **kwargs)
        human = args[0] if isinstance(args[0], str) else args[0].human_id
        note = f"mid_commit {method} {human}"
        timer = threading.Timer(trigger.spec["delay"], trigger.die, (note,))
        timer.start()
        result = await original(self, *args, **kwargs)
        timer.join()  # the timer kills the process, during the write or right after it
        return result

    setattr(Store, method, write)


def patch_call(trigger: Trigger) -> None:
    module_name, name = trigger.spec["target"].split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    when, store = trigger.spec["when"], trigger.spec.get("store")
    point = f"{trigger.spec['target']} ({when})"

    def counts(args: tuple[Any, ...]) -> bool:
        # os.replace: only the rename onto the store counts
        if store is not None and (len(args) < 2 or os.fspath(args[1]) != store):
            return False
        return trigger.due()

    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(original):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            due = counts(args)
            if due and when == "before":
                trigger.die(point)
            result = await original(*args, **kwargs)
            if due:
                trigger.die(point)
            return result

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            due = counts(args)
            if due and when == "before":
                trigger.die(point)
            result = original(*args, **kwargs)
            if due:
                trigger.die(point)
            return result

    setattr(module, name, wrapper)


PATCHES: dict[str, Callable[[Trigger], None]] = {
    "request": patch_request,
    "commit": patch_commit,
    "call": patch_call,
}


def child(request: dict[str, Any]) -> None:
    """In the forked child: become ``python -m haasd ARGV``, set to die as asked."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    kill = request.get("kill")
    if kill:
        PATCHES[kill["kind"]](Trigger(kill))
    sys.argv = ["haasd", *request["argv"]]
    code = 0
    try:
        runpy.run_module("haasd", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - a child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """The zygote's loop (see the module)."""
    # what the daemon and the commands import, once, before any fork
    import httpcore._async.http11  # noqa: F401

    import haasd.app
    import haasd.cli
    import haasd.maintenance  # noqa: F401

    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                child(request)
            answer: dict[str, Any] = {"pid": pid}
        elif request["op"] == "reap":
            _, status = os.waitpid(request["pid"], 0)
            answer = {"code": os.waitstatus_to_exitcode(status)}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
