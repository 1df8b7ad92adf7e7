"""The CLIs for the tests, each in a fresh process, without paying every process's imports.

A test runs `python train.py ...` as a user does and checks its exit status, its two
streams and the files it wrote. Most of such a process's start is importing jax, flax,
orbax, grain and TFDS (seconds on 2 cores), and the suite starts a hundred of them. So one
server process per test worker imports those libraries once, without starting a jax backend
(no device, no thread: nothing a fork could break), and forks a child per command. The child
is the command's own process: its own pid, file descriptors, environment, working directory
and `sys.argv`; the script runs as `__main__` and the interpreter exits as after
`python script.py` (atexit handlers, threads joined, streams flushed).

`run(script, *args, env=..., cwd=..., timeout=...)` returns a `subprocess.CompletedProcess`
like `subprocess.run(..., capture_output=True, text=True)`. The libraries may read the
environment at import, so there is one server per environment (XLA_FLAGS and pytest's
PYTEST_CURRENT_TEST aside: XLA reads the first when the command starts its backend).
SCOREGEN_TEST_NO_FORK_SERVER=1 runs every command as a plain subprocess instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[1]
# What the CLIs import before their own flags: the libraries and the project's modules
# (none defines a flag but training.cli, whose flags every CLI shares).
PRELOAD = ("numpy", "jax", "jax.numpy", "flax.nnx", "optax", "orbax.checkpoint", "grain",
           "tensorflow_datasets", "ml_collections", "ml_collections.config_flags", "absl.app",
           "absl.flags", "etils.epath", "PIL.Image", "tensorboardX", "tqdm", "training.cli",
           "training.loop", "training.dry_run", "training.inference", "training.run_config",
           "training.image_input", "training.images", "training.eval_hook",
           "evaluation.runner", "evaluation.protocol", "evaluation.fid_protocol")
_READY = "ready"


def _serve() -> None:
    """The server: imports PRELOAD, then forks one child per request line on stdin."""
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # The children's collections then skip the preloaded objects (and leave their pages
    # shared with the server).
    gc.freeze()
    sys.stdout.write(_READY + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)  # never returns
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


def _child(request: dict) -> None:
    """Becomes `python SCRIPT ARGS...` in CWD with ENV, streams to the request's files."""
    import runpy

    os.setpgid(0, 0)  # a timeout kills the command's whole group, as its own session would
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(script)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        _exit(stop.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        _exit(1)
    _exit(0)


def _exit(code: object) -> NoReturn:
    """Ends the command as the interpreter's exit would (its status from `sys.exit`'s
    argument, non-daemon threads joined, atexit handlers run, streams flushed), but without
    finalising the modules the server imported: tearing those down takes half a second
    per command, and a command cannot observe it."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # what the interpreter's exit does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status & 0xFF)


# Variables no preloaded library reads at import. XLA reads XLA_FLAGS when the command
# starts its backend; pytest sets PYTEST_CURRENT_TEST to each test's name, so keying on it
# would start a server per test.
_NOT_READ_AT_IMPORT = frozenset({"XLA_FLAGS", "PYTEST_CURRENT_TEST"})


def _server_key(env: dict[str, str]) -> str:
    return json.dumps(sorted((k, v) for k, v in env.items() if k not in _NOT_READ_AT_IMPORT))


class _Server:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.cli_zygote import _serve; _serve()"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1,
        )
        self.streams = Path(tempfile.mkdtemp(prefix="cli-zygote-"))
        self.count = 0
        if self._read_line(timeout=300) != _READY:
            raise RuntimeError("the CLI fork server did not start")

    def _read_line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the CLI fork server exited")
        return line.strip()

    def run(self, script: str, args: list[str], env: dict[str, str], cwd: str,
            timeout: float) -> subprocess.CompletedProcess:
        self.count += 1
        stdout, stderr = (self.streams / f"{self.count}.{k}" for k in ("out", "err"))
        request = {"script": script, "args": args, "env": env, "cwd": cwd,
                   "stdout": str(stdout), "stderr": str(stderr)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._read_line(timeout=60))["pid"]
        reply = self._read_line(timeout=timeout)
        if reply is None:
            os.killpg(pid, signal.SIGKILL)
            self._read_line(timeout=60)
            raise subprocess.TimeoutExpired([script, *args], timeout, stdout.read_text(),
                                            stderr.read_text())
        result = subprocess.CompletedProcess(
            [sys.executable, script, *args], json.loads(reply)["returncode"],
            stdout.read_text(), stderr.read_text())
        stdout.unlink()
        stderr.unlink()
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.streams, ignore_errors=True)


_servers: dict[str, _Server] = {}


def run(script: str | os.PathLike, *args: str, env: dict[str, str] | None = None,
        cwd: str | os.PathLike = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS...` in `cwd` with `env` (default: this process's), captured."""
    env = dict(os.environ if env is None else env)
    script = str(Path(ROOT, script))
    key = _server_key(env)
    if os.environ.get("SCOREGEN_TEST_NO_FORK_SERVER"):
        return subprocess.run([sys.executable, script, *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    if key not in _servers:
        _servers[key] = _Server(env)
    return _servers[key].run(script, list(args), env, str(cwd), timeout)


@atexit.register
def _close_all() -> None:
    for server in _servers.values():
        server.close()
