"""Test-wide set-up, done before jax is first imported.

Eight fake CPU devices (sharding tests), fast compilation, and one persistent cache for the
whole session so that identical programs (resumed runs, CLI subprocesses, which inherit
these variables) compile once.
"""

import os
import subprocess
import tempfile
from importlib.metadata import version

import pytest


def _fast_compile_flags() -> str:
    """Tests compile many small programs and run each a few steps: cheap XLA:CPU compilation
    (no backend optimisation, no expensive LLVM passes) roughly halves the suite's time.
    Before jaxlib 0.12 the classic emitters also compile these programs 2-3 times faster
    than the fusion emitters; 0.12 removed the switch, and XLA aborts on an unknown flag.
    With those emitters each program's machine code is also generated in one piece: the two
    xdist workers already keep both cores busy, and splitting the code to compile its parts
    on parallel threads only adds work (the heavy modules ran 11-15% faster). On jaxlib
    0.12 the same flag made them 9% slower, so it stays with the classic emitters."""
    flags = " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    major_minor = tuple(int(part) for part in version("jaxlib").split(".")[:2])
    if major_minor < (0, 12):
        flags += (" --xla_cpu_use_fusion_emitters=false"
                  " --xla_cpu_parallel_codegen_split_count=1")
    return flags


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    + _fast_compile_flags()
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="scoregen-test-jax-cache-")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Feature networks of test recipes are cached here, not in the user's cache (the default
# digits network is pinned in the repository).
os.environ.setdefault("SCOREGEN_CACHE_DIR", tempfile.mkdtemp(prefix="scoregen-test-cache-"))
# Keep the test-prepared digits out of the user's ~/tensorflow_datasets.
os.environ.setdefault("TFDS_DATA_DIR", tempfile.mkdtemp(prefix="scoregen-test-tfds-"))


def pytest_configure(config):
    """Under pytest-xdist the controller prepares what every worker reads (the digits)
    once, before the workers start, rather than each worker preparing its own copy at the
    same time."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        from data import digits

        digits.prepare(os.environ["TFDS_DATA_DIR"])


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB file system (a tmpfs): a full disk, as the fault probe met it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): no full disk to test on")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
