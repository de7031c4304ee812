"""What every command sets up: XLA's CPU flags, logs, the compile cache, clear errors.

Import this module before JAX: XLA reads its flags once, when JAX starts. Every
mistake a user can make on the command line ends in one line on stderr: exit code
2 for flag syntax (an unknown flag, a value of the wrong type), 1 for everything
else (a config file that does not load, a mistyped config key, a bad value).
"""

import errno
import os
import re
import sys
import traceback
from pathlib import Path

# XLA's concurrency-optimised CPU scheduler keeps many activations alive at once:
# off, a training step of the default network needs less memory. LLVM's
# level 1 instead of 3 compiles faster and, measured on this project's CPUs, also
# runs the default network's training step and forward faster (benchmarks/).
XLA_CPU_FLAGS = (
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "--xla_backend_optimization_level=1",
)
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), *XLA_CPU_FLAGS]))

# The config files import each other (`from configs import demo`): in a checkout
# configs/ sits beside the package, so they load from any working folder.
_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "configs").is_dir() and str(_CHECKOUT) not in sys.path:
  sys.path.append(str(_CHECKOUT))

import jax  # pylint: disable=wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position
from absl import logging  # pylint: disable=wrong-import-position

from mirl_jax import integrity  # pylint: disable=wrong-import-position

#: Bad input or a diverged run: a one-line message, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def _echoes_of_handled_errors(record) -> bool:
  """False for logs of errors that reach the caller anyway, there reported in one line.

  Orbax logs a failed save's traceback from its writer thread before re-raising
  it; asyncio logs the futures of a failed read that nobody awaited.
  """
  if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
    return False
  return not (record.name == "asyncio" and "exception was never retrieved" in record.getMessage())


def setup(verbosity_set: bool) -> None:
  """Quiet logs unless asked (Orbax logs every save at INFO); a persistent compile cache."""
  if not verbosity_set:
    logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_echoes_of_handled_errors)
  # Compiling the network takes a minute on a CPU: keep it for restarts.
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update(
        "jax_compilation_cache_dir",
        os.path.join(os.path.expanduser("~"), ".cache", "mirl_jax", "xla"),
    )
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


#: What a full or failing disk raises where Python itself writes (reports, logs, images).
WRITE_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS)


def run_cleanly(fn, *args):
  """fn(*args); a user error or a failed write ends the process with `error: ...`, exit code 1."""
  try:
    return fn(*args)
  except (*USER_ERRORS, integrity.WriteFailed) as e:
    raise SystemExit(f"error: {e}") from e
  except OSError as e:
    if e.errno not in WRITE_ERRNOS:
      raise
    where = e.filename or "a file (the error names none)"
    message = f"could not write {where} ({errno.errorcode[e.errno]}: {e.strerror})"
    raise SystemExit(f"error: {message}") from e


def fail(message: str, code: int = 1):
  """Ends the process with `error: message` on stderr."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


_HELP = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "-helpfull")


def _config_file(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _config_error(error: BaseException, argv: list[str]) -> str:
  """One line for a config file that does not load or an override naming no key."""
  path = _config_file(argv).split(":", 1)[0]
  if isinstance(error, (AttributeError, KeyError)):
    text = str(error)  # ml_collections nests the KeyError's repr in the message
    named = re.search(r'instead of "([^"]+)"', text) or re.search(r"([A-Za-z_]\w*)", text)
    key = named.group(1) if named else text
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = next(
        (
            a.split("=", 1)[0]
            for a in argv
            if a.lstrip("-").startswith("config.") and key in a.split("=", 1)[0].split(".")
        ),
        f"--config.{key}",
    )
    return (
        f"{flag}: no config key {key!r} in {path}"
        + (f'; did you mean "{hint.group(1)}"?' if hint else "")
        + " (--mode config lists every key)"
    )
  if path and not os.path.isfile(path):
    return f"--config={path}: no such file (expected a Python file defining get_config())"
  frames = [
      f
      for f in traceback.extract_tb(error.__traceback__)
      if path and os.path.abspath(f.filename) == os.path.abspath(path)
  ]
  where = f"line {frames[-1].lineno}" if frames else ""
  if isinstance(error, SyntaxError):
    where, text = f"line {error.lineno}", error.msg
  else:
    lines = [l for l in str(error).splitlines() if l.strip()]
    text = lines[-1].strip() if lines else type(error).__name__
    found = re.findall(rf'File "{re.escape(os.path.abspath(path))}", line (\d+)', str(error))
    where = f"line {found[-1]}" if found else where
  return f"--config={path}: the config does not load ({where}{': ' if where else ''}{text})"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (app.run's flags_parser) with one-line errors and a --help that exits 0."""
  if any(arg in _HELP for arg in argv[1:]):
    print((getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip() + "\n")
    print(flags.FLAGS.main_module_help())
    if "mode" in flags.FLAGS:
      print("\nEvery config key, with its value and meaning: --config FILE --mode config")
    sys.exit(0)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as error:
    if "Error whilst parsing config file" in str(error):  # raised inside get_config()
      fail(_config_error(error, argv))
    fail(f"{error} (--help lists the flags)", 2)
  except Exception as error:  # pylint: disable=broad-except
    fail(_config_error(error, argv))
  if "config" in flags.FLAGS and flags.FLAGS["config"].present:
    try:
      flags.FLAGS.config.keys()  # a file that failed to load raises only when used
    except Exception as error:  # pylint: disable=broad-except
      fail(_config_error(error, argv))
  return rest
