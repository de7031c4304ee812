"""A lost process ends the run on every other process, in one line that names it.

When one process of a multi-process run dies, the others block in their next
collective: with gloo on one host the socket reset fails it at once; across
hosts a collective may wait forever. JAX's coordination service notices a
missing heartbeat only after `heartbeat_timeout_seconds`, and then aborts the
process with a C++ fatal log and a stack trace. So every process also beats
here, through the coordination service's key-value store, and watches the
others' beats: a process whose beat has not changed for `timeout_s` is named
(index, host, pid) on stderr, and this process exits at once with status 1,
before JAX's own, longer, timeout (see `jax_heartbeat_timeout`). Restarting
every process resumes from the last checkpoint.

When process 0 is lost, the coordination service is lost with it, and JAX's
client aborts the surviving processes at once with its own message ("the leader
task was preempted/died"); nothing in Python runs before that.
"""

import atexit
import json
import os
import socket
import sys
import threading
import time

import jax

_PREFIX = "mirl_jax/beat/"
_DONE = "mirl_jax/done/"  # a process that ends cleanly says so: its silence is not a loss
_state = {"thread": None, "timeout_s": None, "cleanups": [], "peers": {}, "stop": None}


def jax_heartbeat_timeout(timeout_s: float) -> int:
  """The heartbeat timeout to give jax.distributed: past ours, so that ours speaks first."""
  return int(2 * timeout_s + 10)


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  return distributed.global_state.client


def on_exit(cleanup) -> None:
  """`cleanup()` runs before a lost peer ends this process (os._exit skips atexit)."""
  _state["cleanups"].append(cleanup)


def exit_now(message: str, code: int = 1):
  """`error: message` on stderr, the cleanups, and os._exit: no collective, no JAX shutdown."""
  for cleanup in _state["cleanups"]:
    try:
      cleanup()
    except Exception:  # pylint: disable=broad-except
      pass
  print(f"\nerror: {message}", file=sys.stderr, flush=True)  # after a progress bar's line
  os._exit(code)  # pylint: disable=protected-access


def _describe(index: int) -> str:
  peer = _state["peers"].get(index, {})
  where = f" (host {peer['host']}, pid {peer['pid']})" if peer else ""
  return f"process {index} of {jax.process_count()}{where}"


def start(timeout_s: float) -> None:
  """Beats and watches every other process of a multi-process run; once per process."""
  if jax.process_count() == 1 or _state["thread"] is not None:
    return
  client, me = _client(), jax.process_index()
  if client is None:
    return
  client.key_value_set(
      f"mirl_jax/peer/{me}", json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
  )
  for i in range(jax.process_count()):
    _state["peers"][i] = json.loads(
        client.blocking_key_value_get(f"mirl_jax/peer/{i}", int(1000 * timeout_s))
    )
  _state["timeout_s"], _state["stop"] = timeout_s, threading.Event()
  thread = threading.Thread(target=_watch, args=(client, me, timeout_s), daemon=True)
  _state["thread"] = thread
  thread.start()
  atexit.register(stop)  # before JAX's shutdown (atexit runs the latest first)


def stop() -> None:
  """Says this process ended cleanly, and stops its beats and watch."""
  thread = _state["thread"]
  if thread is None or _state["stop"].is_set():
    return
  _state["stop"].set()
  thread.join()
  try:
    _client().key_value_set(f"{_DONE}{jax.process_index()}", "1", allow_overwrite=True)
  except Exception:  # pylint: disable=broad-except  # the coordinator ended first
    pass


def _watch(client, me: int, timeout_s: float) -> None:
  interval = max(0.2, timeout_s / 10)
  seen, changed, beat = {}, {}, 0
  while not _state["stop"].is_set():
    beat += 1
    now = time.monotonic()
    try:
      client.key_value_set(f"{_PREFIX}{me}", str(beat), allow_overwrite=True)
      values = dict(client.key_value_dir_get(_PREFIX))
      done = dict(client.key_value_dir_get(_DONE))
    except Exception as e:  # pylint: disable=broad-except  # the coordinator is gone
      if _state["stop"].is_set():
        return
      exit_now(f"lost {_describe(0)}, which coordinates the run ({str(e).splitlines()[0]})")
    for i in range(jax.process_count()):
      value = values.get(f"{_PREFIX}{i}")
      if i == me or f"{_DONE}{i}" in done:
        continue
      if i not in seen or value != seen[i]:
        seen[i], changed[i] = value, now
      elif now - changed[i] > timeout_s:
        exit_now(
            f"lost {_describe(i)}: no heartbeat for {now - changed[i]:.0f} s (killed, preempted "
            "or crashed); every process of the run stops: restart them all to resume from the "
            "last checkpoint"
        )
    _state["stop"].wait(interval)


def _collective_failure(error: BaseException) -> bool:
  text = str(error)
  return isinstance(error, jax.errors.JaxRuntimeError) or any(
      sign in text for sign in ("Gloo", "NCCL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "Connection")
  )


def after_error(error: BaseException) -> None:
  """Ends a multi-process run's process on an error, without JAX's shutdown barrier.

  That barrier would wait for every process, a lost one too. An error that may
  be a lost peer's echo (a failed collective) first gives the watchdog time to
  name the lost process. Returns at once when no watchdog runs (one process).
  """
  if _state["thread"] is None:
    return
  if _collective_failure(error):
    deadline = time.monotonic() + 1.5 * _state["timeout_s"] + 1
    while time.monotonic() < deadline:
      time.sleep(0.2)
  if isinstance(error, SystemExit) and isinstance(error.code, str):
    text = error.code.removeprefix("error: ")
  else:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
  exit_now(text)
