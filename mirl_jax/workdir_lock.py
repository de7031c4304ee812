"""One training run per workdir, on a local disk, NFS or gcsfuse alike.

Not flock: it is per host at best, and a no-op or an error on NFS without lockd and on gcsfuse.
``os.mkdir`` is the exclusive create all three honour (gcsfuse creates the directory object only if
it does not exist), so ``WORKDIR/.lock`` existing means held; ``.lock/owner.json``, always replaced
whole, names the holder. A lock left by a dead run is taken over automatically, so the holder must
be judged: on its own host by its pid (and the pid's start time, so a reused pid is not taken for
the holder); another host cannot see the pid, so there by a heartbeat the holder rewrites every
``heartbeat_s``, dead once older than ``stale_after_s`` (which must exceed the hosts' clock skew).

Racers that judged one lock dead must not both remove it: the later one would remove the lock the
first just made. So a taker first makes ``.lock.claim-<dead token>`` (mkdir again: one winner), then
judges the lock again under the claim and removes it only if it is still the one it judged dead.
Directories are never renamed: gcsfuse refuses to on flat buckets (--rename-dir-limit is 0 by
default) and would copy them if allowed. A SLURM job that was requeued (same job id, another
restart count) takes over its own previous lock at once. A run whose heartbeats stalled may be taken over alive;
``check`` re-reads owner.json before each save, so such a run stops instead of writing beside the
new holder.
"""

import contextlib
import datetime
import json
import os
import random
import shutil
import socket
import threading
import time
import uuid

from absl import logging

LOCK = ".lock"
OWNER = "owner.json"
_ATTEMPTS = 40  # acquire's tries while other racers hold a claim: a few seconds in all


class WorkdirBusy(ValueError):
  """A live run holds the workdir; the message says which and what to do, in one line."""


class WorkdirLost(WorkdirBusy):
  """Another run took the workdir over from this one (this one's heartbeats had stalled)."""


def _proc_start(pid):
  """The process's start time (ticks since boot), to tell a reused pid apart; None off Linux."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22; the name may hold ") "
  except (OSError, IndexError, ValueError):
    return None


def _slurm_job():
  """(job id, restart count) under SLURM, else None: a requeued job keeps its id."""
  job = os.environ.get("SLURM_JOB_ID")
  return (job, os.environ.get("SLURM_RESTART_COUNT", "0")) if job else None


def _read_owner(path):
  try:
    with open(path) as f:
      owner = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(owner, dict) or not isinstance(owner.get("heartbeat"), (int, float)):
    return None
  token = owner.get("token")  # it names a claim directory: no path tricks
  return owner if isinstance(token, str) and token.isalnum() and len(token) <= 64 else None


def _holder(owner, now):
  age = max(0.0, now - owner["heartbeat"])
  return (
      f"the run started {owner.get('started')} on host {owner.get('host')}, pid {owner.get('pid')}"
      f" (last heartbeat {age:.0f} s ago)"
  )


class WorkdirLock:
  """Holds WORKDIR/.lock for one run (see the module docstring); a context manager."""

  def __init__(self, workdir, heartbeat_s=30.0, stale_after_s=300.0):
    self.workdir = os.fspath(workdir)
    self.heartbeat_s = float(heartbeat_s)
    self.stale_after_s = float(stale_after_s)
    # A live holder touches .lock at each heartbeat (owner.json is replaced in it); the floor leaves
    # a slow filesystem time to show the owner.json written right after mkdir.
    self.no_owner_after_s = max(2.0 * self.heartbeat_s, 60.0)
    self.path = os.path.join(self.workdir, LOCK)
    self.token = None
    self.lost_to = None  # the owner.json of whoever took the lock over from us
    self._owner = None
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()

  def acquire(self):
    """Takes the workdir, over a dead run's lock if need be; raises WorkdirBusy if a run lives."""
    os.makedirs(self.workdir, exist_ok=True)
    token = uuid.uuid4().hex
    for _ in range(_ATTEMPTS):
      try:
        os.mkdir(self.path)
      except FileExistsError:
        self._take_over()
        continue
      now = datetime.datetime.now(datetime.timezone.utc)
      self.token, self.lost_to = token, None
      self._owner = {
          "host": socket.gethostname(),
          "pid": os.getpid(),
          "pid_start": _proc_start(os.getpid()),
          "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
          "heartbeat": now.timestamp(),
          "token": token,
          "slurm_job": _slurm_job(),
      }
      try:
        self._write(self._owner)
      except BaseException:
        self.token = None
        shutil.rmtree(self.path, ignore_errors=True)
        raise
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
      self._thread.start()
      return self
    raise WorkdirBusy(f"{self.workdir} is being taken over by another run: try again in a moment")

  def _judge(self):
    """(owner, why it is dead) of the lock as it is now; raises WorkdirBusy while it lives."""
    now = time.time()
    owner = _read_owner(os.path.join(self.path, OWNER))
    if owner is None:  # its holder died before writing owner.json, or it is being written
      age = max(0.0, now - os.stat(self.path).st_mtime)
      if age > self.no_owner_after_s:
        return None, f"{LOCK} has no readable {OWNER} and has not changed for {age:.0f} s"
      raise WorkdirBusy(
          f"{self.workdir} is in use by a run that has not written {LOCK}/{OWNER} yet (changed"
          f" {age:.0f} s ago, taken over after {self.no_owner_after_s:.0f} s): wait for it to end"
      )
    job, held_by = _slurm_job(), owner.get("slurm_job")
    if job and isinstance(held_by, list) and held_by[0] == job[0] and held_by[1] != job[1]:
      return owner, f"SLURM requeued its job {job[0]} (this is restart {job[1]})"
    if owner.get("host") == socket.gethostname():
      pid = owner.get("pid")
      if not isinstance(pid, int) or pid <= 0:
        return owner, f"its pid {pid!r} is not a process id"
      try:
        os.kill(pid, 0)
      except ProcessLookupError:
        return owner, f"pid {pid} no longer runs on this host"
      except PermissionError:
        pass  # alive, under another user
      start = owner.get("pid_start")
      if start is not None and _proc_start(pid) not in (None, start):
        return owner, f"pid {pid} is now another process (it started later)"
    else:
      age = now - owner["heartbeat"]
      if age > self.stale_after_s:
        return owner, f"its last heartbeat is {age:.0f} s old (over {self.stale_after_s:.0f} s)"
    raise WorkdirBusy(
        f"{self.workdir} is in use by {_holder(owner, now)}: wait for it to end or stop it; a lock"
        " left by a dead run is taken over automatically"
    )

  def _take_over(self):
    """Removes .lock if its holder is dead and no other racer is at it; WorkdirBusy if it lives."""
    try:
      owner, _ = self._judge()
    except FileNotFoundError:
      return  # released meanwhile: mkdir again
    token = owner["token"] if owner else "none"
    claim = f"{self.path}.claim-{token}"
    try:
      os.mkdir(claim)
    except FileExistsError:  # another racer is at it; a claim its taker died holding is broken
      with contextlib.suppress(OSError):
        if time.time() - os.stat(claim).st_mtime > self.stale_after_s:
          os.rmdir(claim)
      time.sleep(random.uniform(0.05, 0.15))
      return
    try:
      again, why = self._judge()  # the lock may have changed (or come back to life) since
      if (again or {}).get("token") != (owner or {}).get("token"):
        return
      dead = _holder(owner, time.time()) if owner else "a run"
      logging.warning("Taking over %s from %s: it is dead, as %s", self.workdir, dead, why)
      shutil.rmtree(self.path, ignore_errors=True)
    except FileNotFoundError:
      pass  # released meanwhile
    finally:
      with contextlib.suppress(OSError):
        os.rmdir(claim)

  def _write(self, owner):
    tmp = os.path.join(self.path, f".{OWNER}.{owner['token']}.tmp")
    with open(tmp, "w") as f:
      json.dump(owner, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.path.join(self.path, OWNER))

  def _beat(self):
    """Refreshes the heartbeat while owner.json holds our token; stops once it holds another."""
    while not self._stop.wait(self.heartbeat_s):
      owner = _read_owner(os.path.join(self.path, OWNER))
      if owner is None:
        continue  # unreadable or in flux: a write now might land in another run's new lock
      if owner["token"] != self._owner["token"]:
        self.lost_to = owner
        logging.warning("%s was taken over by %s", self.workdir, _holder(owner, time.time()))
        return
      try:
        self._owner["heartbeat"] = time.time()
        self._write(self._owner)
      except OSError as e:
        logging.warning("Cannot refresh the heartbeat in %s: %s", self.path, e)

  def check(self):
    """Raises WorkdirLost unless this run still holds the workdir: call it before each save."""
    if self.token is None:
      raise RuntimeError(f"{self.workdir} is not held by this lock: acquire() it first")
    for wait in (0.1, 0.3, None):  # a flaky read should not stop a run
      owner = _read_owner(os.path.join(self.path, OWNER))
      if owner is not None or wait is None:
        break
      time.sleep(wait)
    if owner is not None and owner["token"] != self.token:
      self.lost_to = owner
    if owner is not None and self.lost_to is None:
      return
    what = f"lost its lock ({LOCK}/{OWNER} is gone or unreadable)"
    if self.lost_to is not None:
      what = f"was taken over by {_holder(self.lost_to, time.time())}"
    raise WorkdirLost(
        f"{self.workdir} {what}: stop this run, so that two runs never write the same workdir"
    )

  def release(self):
    """Stops the heartbeat, then removes .lock if it is still ours. Idempotent."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=max(10.0, 2.0 * self.heartbeat_s))
    self._thread = None
    token, self.token = self.token, None
    if token is None:
      return
    claim = f"{self.path}.claim-{token}"
    try:
      os.mkdir(claim)  # the same claim a taker would hold: never remove a lock being taken over
    except OSError:
      return
    try:
      owner = _read_owner(os.path.join(self.path, OWNER))
      if owner is not None and owner["token"] == token:
        shutil.rmtree(self.path, ignore_errors=True)
    finally:
      with contextlib.suppress(OSError):
        os.rmdir(claim)


@contextlib.contextmanager
def one_run(workdir, holder: bool, holder_says=lambda ok: ok, on_exit=None):
  """The workdir for one run of one or more processes; yields the check to call before saves.

  Only the `holder` process (process 0) takes the lock; `holder_says(ok)` gives
  every process the holder's outcome, so all stop if it is refused. A workdir
  this made is removed again if the run wrote nothing in it.
  """
  created = not os.path.exists(workdir)
  lock, refused = (WorkdirLock(workdir) if holder else None), None
  if lock is not None:
    try:
      lock.acquire()
      if on_exit is not None:
        on_exit(lock.release)  # a process ended without unwinding (a lost peer) releases it too
    except WorkdirBusy as e:
      refused = e
  if not holder_says(refused is None):
    raise refused or WorkdirBusy(f"process 0 could not lock {workdir} (see its error)")
  try:
    yield lock.check if lock is not None else (lambda: None)
  finally:
    if lock is not None:
      lock.release()
      if created and not os.listdir(workdir):
        os.rmdir(workdir)
