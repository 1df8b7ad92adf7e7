"""What the CLIs share: one-line errors for bad input, and the multi-host start."""

import logging
import os
import re
import sys
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from errors import RequestError, UserError
from training import writable

_DEBUG_ENV = "SCOREGEN_DEBUG"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What of _REPO_ROOT is ours: a checkout's folders, or (pip-installed) site-packages' entries.
_OWN_TOP_LEVEL = frozenset({"bench", "configs", "data", "diffusion", "evaluation", "gan",
                            "networks", "style", "training", "vae", "tests", "errors.py",
                            "progress.py", "train.py", "sample.py", "evaluate.py", "stylize.py",
                            "reflow.py"})

COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 for multi-host runs (jax.distributed.initialize); unset on a "
    "single host. TPU pods and SLURM clusters may pass --multihost alone (auto-detect).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.path.join("~", ".cache", "scoregen", "jax"),
    "Persistent XLA compilation cache (a local path or a bucket): a repeated or resumed job "
    "reuses the compiled programs instead of compiling again. '' turns it off; "
    "$JAX_COMPILATION_CACHE_DIR, if set, takes precedence.")
# Programs that compile faster than this are not worth a disk round trip.
_CACHE_MIN_COMPILE_SECONDS = 1.0


def enable_compilation_cache() -> str | None:
    """Points jax's persistent compilation cache at --compilation_cache_dir; returns it.

    Before jax is imported, through the environment variables jax reads at import, so
    that a command refused for its input never loads jax (a fraction of a second instead
    of seconds); after, through jax.config."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # jax reads it itself
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    path = COMPILATION_CACHE_DIR.value
    if not path:
        return None
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    settings = {"jax_compilation_cache_dir": path}
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        settings["jax_persistent_cache_min_compile_time_secs"] = _CACHE_MIN_COMPILE_SECONDS
    jax = sys.modules.get("jax")
    for name, value in settings.items():
        if jax is not None:
            jax.config.update(name, value)
        else:
            os.environ[name.upper()] = str(value)
    return path


def is_multihost() -> bool:
    """Whether the flags ask for a multi-host run (jax.distributed)."""
    return bool(MULTIHOST.value or COORDINATOR.value)


def checked_workdir(path: str) -> str:
    """--workdir made absolute, if this process can write it and the folders a run writes
    in it (UserError otherwise: a file, a path under a file, no write permission), before
    any work is done."""
    path = writable.check_folder(path, "--workdir")
    for sub in ("checkpoints", "samples"):
        if "://" not in path and os.path.lexists(os.path.join(path, sub)):
            writable.check_folder(os.path.join(path, sub), f"--workdir's {sub} folder")
    return path


def maybe_initialize_distributed() -> None:
    """Joins a multi-host job when asked to (by --multihost or --coordinator_address)."""
    if not (MULTIHOST.value or COORDINATOR.value):
        return
    import jax

    jax.distributed.initialize(
        coordinator_address=COORDINATOR.value,
        num_processes=NUM_PROCESSES.value,
        process_id=PROCESS_ID.value,
    )
    if jax.default_backend() == "cpu" and jax.config.jax_enable_compilation_cache:
        # On jax 0.12 a multi-process CPU program loaded from the persistent cache hangs in
        # its first cross-process collective (both processes wait in gloo's all-reduce for
        # ever), so such a job always compiles. CPU clusters are for trying a multi-host
        # set-up out, where compile time matters little.
        jax.config.update("jax_enable_compilation_cache", False)
        absl_logging.warning("multi-process CPU job: the persistent compilation cache is "
                             "off (its programs hang in their first collective on jax 0.12)")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 600 else text[:600] + "..."


def guarded(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """Bad input -> one line: exit 2 for a RequestError (a flag's value, flags that do not
    go together: what a parse error gets too), exit 1 for the rest (UserError, ValueError,
    a file or folder that cannot be read or written: the OSError family, named by path).

    Set SCOREGEN_DEBUG=1 to get the full traceback instead.
    """

    def wrapper(argv: list[str]) -> None:
        try:
            enable_compilation_cache()
            main(argv)
        except (UserError, ValueError, OSError) as err:
            if os.environ.get(_DEBUG_ENV):
                raise
            prog = os.path.basename(sys.argv[0])
            print(f"{prog}: error: {_one_line(_named(err))}", file=sys.stderr)
            sys.exit(2 if isinstance(err, RequestError) else 1)

    return wrapper


def _named(err: BaseException) -> BaseException | str:
    """An OSError as 'what went wrong: the path' (its own text often omits the path)."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename
        return f"{err.strerror}: {where}"
    return err


def _config_file_errors() -> str | None:
    """ml_collections defers a config file that cannot be loaded (missing, a folder) to
    its first use, as a chained OSError: the one line that names it, or None."""
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        error = getattr(flag.value, "_error", None) if flag.present else None
        if isinstance(error, OSError):
            path = str(getattr(flag, "config_filename", "")).split(":", 1)[0]
            reason = ("is a folder, not a file" if os.path.isdir(path) else
                      "does not exist" if not os.path.exists(path) else
                      f"cannot be read ({_one_line(error)[:200]})")
            return f"--{name}: the config file {path} {reason}"
    return None


def _override_message(err: BaseException) -> str:
    """ml_collections nests an escaped KeyError repr in its AttributeError; unpack it."""
    text = str(err)
    key = re.search(r"[\\']*([A-Za-z_][\w.]*)[\\']*", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    if isinstance(err, AttributeError | KeyError) and key:
        return f"unknown config key {key.group(1)!r}" + (
            f"; did you mean {hint.group(1)!r}?" if hint else ""
        )
    return f"bad config override: {_one_line(err)}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, plus one-line errors for bad `--config.x.y=` overrides.

    ml_collections raises plain AttributeError/KeyError/TypeError for an unknown or
    ill-typed override, which absl would let escape as a traceback.
    """
    try:
        rest = flags.FLAGS(argv)
    except SyntaxError as err:  # a config file that is not Python: its file and line
        print(f"{os.path.basename(argv[0])}: error: syntax error in the config file "
              f"{err.filename}, line {err.lineno}: {err.msg}", file=sys.stderr)
        sys.exit(1)
    except flags.Error as err:
        print(f"{os.path.basename(argv[0])}: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        if os.environ.get(_DEBUG_ENV):
            raise
        print(f"{os.path.basename(argv[0])}: error: {_override_message(err)}", file=sys.stderr)
        sys.exit(2)
    missing = _config_file_errors()
    if missing:
        print(f"{os.path.basename(argv[0])}: error: {missing}", file=sys.stderr)
        sys.exit(1)
    return rest


class _OwnInfoOnly(logging.Filter):
    """Passes our own INFO lines and everyone's warnings; orbax and tfds log every file
    they touch at INFO, which would bury the training log."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname
        if record.exc_info and f"{os.sep}orbax{os.sep}" in path:
            # A failed background save: orbax logs a traceback from each of its threads;
            # the run reports the failure itself in one line (training/checkpoint.py).
            record.exc_info = record.exc_text = None
        if record.levelno >= logging.WARNING:
            # tfds suggests OpenCV for decoding; PIL is what we want for tiny images.
            return "OpenCV is not installed" not in record.getMessage()
        return _is_own(path)


def _is_own(path: str) -> bool:
    """Whether `path` is one of the project's files, in a checkout or installed."""
    if not path.startswith(_REPO_ROOT + os.sep):
        return False
    return path[len(_REPO_ROOT) + 1:].split(os.sep, 1)[0] in _OWN_TOP_LEVEL


def quiet_library_logs() -> None:
    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())


def run(main: Callable[[list[str]], None]) -> None:
    quiet_library_logs()
    app.run(guarded(main), flags_parser=_parse_flags)


def run_on_workdir(main: Callable[[list[str]], None]) -> None:
    """`run(main)` for a command that reads a trained run (sample.py, evaluate.py):
    `--config.x=` overrides without `--config` apply to the run's WORKDIR/config.json."""
    from training import run_config

    try:
        sys.argv = run_config.workdir_config_argv(sys.argv)
    except UserError as err:
        sys.exit(f"{os.path.basename(sys.argv[0])}: error: {err}")
    run(main)
