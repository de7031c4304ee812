"""What every command sets up: XLA's CPU flags, logs, the compile cache, clear errors.

Import this module before JAX: XLA reads its flags once, when JAX starts.
"""

import os
import sys
from pathlib import Path

# XLA's concurrency-optimised CPU scheduler keeps many activations alive at once:
# off, a training step of the default network needs a quarter less memory.
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), "--xla_cpu_enable_concurrency_optimized_scheduler=false"]))

# The config files import each other (`from configs import demo`): in a checkout
# configs/ sits beside the package, so they load from any working folder.
_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "configs").is_dir() and str(_CHECKOUT) not in sys.path:
  sys.path.append(str(_CHECKOUT))

import jax  # pylint: disable=wrong-import-position
from absl import logging  # pylint: disable=wrong-import-position

#: Bad input or a diverged run: a one-line message, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def setup(verbosity_set: bool) -> None:
  """Quiet logs unless asked (Orbax logs every save at INFO); a persistent compile cache."""
  if not verbosity_set:
    logging.set_verbosity(logging.WARNING)
  # Compiling the network takes a minute on a CPU: keep it for restarts.
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "mirl_jax", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def run_cleanly(fn, *args):
  """fn(*args); a user error ends the process with `error: ...` and exit code 1."""
  try:
    return fn(*args)
  except USER_ERRORS as e:
    raise SystemExit(f"error: {e}") from e
