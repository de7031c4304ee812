"""One run per workdir: a live holder refuses the next run, a dead one's lock is taken over."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mirl_jax import workdir_lock

ROOT = Path(__file__).resolve().parents[1]

# A run in another process: waits for GO (if not "-"), tries the lock, says "won" or "busy <why>",
# and a winner holds the lock until its stdin closes. Racers dawdle after each read of owner.json,
# which widens the window in which a racer acts on what it read before another racer's takeover.
CHILD = r"""
import os, random, sys, time
from mirl_jax import workdir_lock
workdir, go = sys.argv[1], sys.argv[2]
if go != "-":
  read = workdir_lock._read_owner
  workdir_lock._read_owner = lambda path: (read(path), time.sleep(random.uniform(0, 0.02)))[0]
  open(f"{go}.ready.{os.getpid()}", "w").close()
  while not os.path.exists(go):
    time.sleep(0.002)
try:
  lock = workdir_lock.WorkdirLock(workdir, heartbeat_s=0.2).acquire()
except workdir_lock.WorkdirBusy as e:
  print("busy", e, flush=True)
  sys.exit(0)
print("won", flush=True)
sys.stdin.read()
lock.release()
"""


def start_child(workdir, go="-"):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen(
      [sys.executable, "-c", CHILD, str(workdir), str(go)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=env,
      cwd=ROOT,
  )


def owner_of(workdir):
  return json.loads((Path(workdir) / ".lock" / "owner.json").read_text())


def plant_lock(workdir, **owner):
  """A lock as another run would have left it."""
  (Path(workdir) / ".lock").mkdir(parents=True)
  owner = {
      "host": "elsewhere",
      "pid": 4242,
      "started": "2026-11-28T01:02:03Z",
      "heartbeat": time.time(),
      "token": uuid.uuid4().hex,
      **owner,
  }
  (Path(workdir) / ".lock" / "owner.json").write_text(json.dumps(owner))
  return owner


def test_a_live_run_in_another_process_refuses_the_next(tmp_path):
  child = start_child(tmp_path)
  try:
    assert child.stdout.readline() == "won\n"
    owner = owner_of(tmp_path)
    with pytest.raises(workdir_lock.WorkdirBusy) as busy:
      workdir_lock.WorkdirLock(tmp_path).acquire()
    message = str(busy.value)
    assert "\n" not in message and message.startswith(f"{tmp_path} is in use by")
    for part in (f"host {socket.gethostname()}", f"pid {child.pid}", owner["started"]):
      assert part in message
    assert "heartbeat" in message and "taken over automatically" in message
  finally:
    child.communicate(timeout=20)  # closes its stdin: it releases
  assert not (tmp_path / ".lock").exists()
  with workdir_lock.WorkdirLock(tmp_path) as lock:  # a released workdir is free again
    lock.check()


def test_a_killed_runs_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  child = start_child(tmp_path)
  assert child.stdout.readline() == "won\n"
  dead = owner_of(tmp_path)
  child.send_signal(signal.SIGKILL)
  child.communicate(timeout=20)
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    assert owner_of(tmp_path)["pid"] == os.getpid()
    lock.check()
  warning = [r.getMessage() for r in caplog.records if "Taking over" in r.getMessage()]
  assert len(warning) == 1 and "\n" not in warning[0]
  for part in (f"host {socket.gethostname()}", f"pid {child.pid}", dead["started"], "no longer"):
    assert part in warning[0]


def test_another_hosts_lock_lives_while_its_heartbeat_is_fresh(tmp_path, caplog):
  plant_lock(tmp_path, heartbeat=time.time() - 5)
  with pytest.raises(workdir_lock.WorkdirBusy, match=r"host elsewhere, pid 4242 .*heartbeat 5 s"):
    workdir_lock.WorkdirLock(tmp_path, stale_after_s=60).acquire()
  (tmp_path / ".lock" / "owner.json").write_text(
      json.dumps({**owner_of(tmp_path), "heartbeat": time.time() - 61})
  )
  with workdir_lock.WorkdirLock(tmp_path, stale_after_s=60):
    assert owner_of(tmp_path)["host"] == socket.gethostname()
  assert "host elsewhere, pid 4242" in caplog.text and "heartbeat is 61 s old" in caplog.text


def test_a_requeued_slurm_job_takes_over_its_own_lock_at_once(tmp_path, caplog, monkeypatch):
  """The same job id, restarted: its previous incarnation is dead, whatever its heartbeat."""
  monkeypatch.setenv("SLURM_JOB_ID", "777")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  plant_lock(tmp_path, slurm_job=["777", "1"])  # this very incarnation, elsewhere: alive
  with pytest.raises(workdir_lock.WorkdirBusy, match="host elsewhere"):
    workdir_lock.WorkdirLock(tmp_path).acquire()
  (tmp_path / ".lock" / "owner.json").write_text(
      json.dumps({**owner_of(tmp_path), "slurm_job": ["777", "0"]})
  )
  with workdir_lock.WorkdirLock(tmp_path):
    assert owner_of(tmp_path)["slurm_job"] == ["777", "1"]
  assert "SLURM requeued its job 777 (this is restart 1)" in caplog.text


def test_a_reused_pid_does_not_pass_for_the_holder(tmp_path, caplog):
  if workdir_lock._proc_start(os.getpid()) is None:
    pytest.skip("no /proc to read a process's start time from")
  plant_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), pid_start=1)
  with workdir_lock.WorkdirLock(tmp_path):
    pass
  assert "is now another process" in caplog.text


def test_this_process_cannot_take_its_own_workdir_twice(tmp_path):
  with workdir_lock.WorkdirLock(tmp_path):
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {os.getpid()} "):
      workdir_lock.WorkdirLock(tmp_path).acquire()


def test_racers_for_a_dead_lock_leave_exactly_one_winner(tmp_path):
  plant_lock(tmp_path, heartbeat=time.time() - 3600)
  go = tmp_path / "go"
  children = [start_child(tmp_path, go) for _ in range(6)]
  try:
    deadline = time.time() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < len(children):
      assert time.time() < deadline and all(c.poll() is None for c in children)
      time.sleep(0.01)
    go.touch()
    said = [c.stdout.readline() for c in children]
    assert sorted(s.split()[0] for s in said) == ["busy"] * 5 + ["won"], said
    winner = children[[s.split()[0] for s in said].index("won")]
    assert owner_of(tmp_path)["pid"] == winner.pid
    assert all(f"pid {winner.pid}" in s or "not written" in s for s in said if s != "won\n")
  finally:
    for c in children:
      c.communicate(timeout=20)
  assert not (tmp_path / ".lock").exists() and not list(tmp_path.glob(".lock.claim-*"))


def test_heartbeats_advance_and_check_names_who_took_over(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path, heartbeat_s=0.2).acquire()
  try:
    first = owner_of(tmp_path)["heartbeat"]
    deadline = time.time() + 10
    while owner_of(tmp_path)["heartbeat"] == first:
      assert time.time() < deadline, "no heartbeat"
      time.sleep(0.05)
    lock.check()
    thief = plant_lock(tmp_path / "elsewhere", host="h2", pid=99, started="2026-12-01T00:00:00Z")
    os.replace(tmp_path / "elsewhere/.lock/owner.json", tmp_path / ".lock/owner.json")
    with pytest.raises(workdir_lock.WorkdirLost) as lost:
      lock.check()
    message = str(lost.value)
    assert "\n" not in message and message.startswith(f"{tmp_path} was taken over by")
    assert "host h2, pid 99" in message and thief["started"] in message
    deadline = time.time() + 10
    while lock._thread.is_alive():  # the heartbeat saw it too, and stopped writing
      assert time.time() < deadline
      time.sleep(0.05)
    assert owner_of(tmp_path) == thief
  finally:
    lock.release()
  assert owner_of(tmp_path) == thief  # not ours any more: left alone
  lock.release()  # idempotent


def test_release_removes_only_our_own_lock_and_frees_the_workdir(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path).acquire()
  lock.release()
  lock.release()
  assert not (tmp_path / ".lock").exists()
  with pytest.raises(RuntimeError):
    lock.check()
  again = workdir_lock.WorkdirLock(tmp_path).acquire()
  lock.release()  # a released lock does not touch the next holder's
  again.check()
  again.release()
  assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("owner_json", [None, "{not json", '{"host": "h"}'])
def test_a_lock_without_a_readable_owner_is_busy_until_old(tmp_path, caplog, owner_json):
  (tmp_path / ".lock").mkdir()
  if owner_json is not None:
    (tmp_path / ".lock" / "owner.json").write_text(owner_json)
  with pytest.raises(workdir_lock.WorkdirBusy, match="has not written .lock/owner.json yet"):
    workdir_lock.WorkdirLock(tmp_path).acquire()
  old = time.time() - 3600
  os.utime(tmp_path / ".lock", (old, old))
  with workdir_lock.WorkdirLock(tmp_path):
    assert owner_of(tmp_path)["pid"] == os.getpid()
  assert "no readable owner.json" in caplog.text


def test_one_run_stops_every_process_when_process_0_is_refused_and_cleans_up(tmp_path):
  held = tmp_path / "held"
  with workdir_lock.WorkdirLock(held):
    with pytest.raises(workdir_lock.WorkdirBusy, match="in use by the run started"):
      with workdir_lock.one_run(held, True):
        pass
    # Another process of the run learns process 0's refusal, not the lock's holder.
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"process 0 could not lock {held}"):
      with workdir_lock.one_run(held, False, holder_says=lambda ok: False):
        pass
  fresh = tmp_path / "fresh"
  with pytest.raises(RuntimeError, match="before writing"):
    with workdir_lock.one_run(fresh, True) as check:
      check()
      assert (fresh / ".lock").is_dir()
      raise RuntimeError("stopped before writing")
  assert not fresh.exists()  # nothing written: the workdir it made is gone again
  with workdir_lock.one_run(fresh, True):
    (fresh / "summary.json").write_text("[]")
  assert sorted(p.name for p in fresh.iterdir()) == ["summary.json"]
