"""Test-wide set-up, done before jax is first imported.

Eight fake CPU devices (sharding tests), and one persistent compilation cache for the
whole session so that identical programs (resumed runs, CLI subprocesses, which inherit
these variables) compile once.
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="scoregen-test-jax-cache-")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Keep the test-prepared digits out of the user's ~/tensorflow_datasets.
os.environ.setdefault("TFDS_DATA_DIR", tempfile.mkdtemp(prefix="scoregen-test-tfds-"))
