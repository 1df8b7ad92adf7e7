import jax, jax.numpy as jnp, numpy as np, os, glob
from tests.configs import tiny
from training.checkpoint import Checkpointer
from errors import CheckpointError
import tempfile
d = tempfile.mkdtemp()
ck = Checkpointer(d, tiny.get_config())
st = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)), "step": jnp.asarray(1)}
ck.save(1, st, {"a": 1}); ck.close()
files = sorted(glob.glob(f"{d}/checkpoints/1/state/**/d/*", recursive=True), key=os.path.getsize)
print([(os.path.relpath(f, d), os.path.getsize(f)) for f in files])
f = files[-1]; b = bytearray(open(f, "rb").read()); b[len(b)//2] ^= 0x10; open(f, "wb").write(b)
try:
    s, _ = Checkpointer(d, tiny.get_config()).restore(1, jax.eval_shape(lambda: st))
    print("restored", float(jnp.abs(s["w"] - st["w"]).max()))
except CheckpointError as e: print("ERR", e)
