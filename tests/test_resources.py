"""resources: the per-round figures count what they say (files, threads, children), and a round
recorded again replaces its entry."""

import gc
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from mirl_jax import resources

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")


def _wait_for(condition, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def test_open_files_count():
  before = resources.usage()["open_fds"]
  fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
  try:
    assert resources.usage()["open_fds"] == before + 5
  finally:
    for fd in fds:
      os.close(fd)
  assert resources.usage()["open_fds"] == before


def test_a_thread_counts_in_both_counts():
  before = resources.usage()
  stop = threading.Event()
  thread = threading.Thread(target=stop.wait)
  thread.start()
  try:
    during = resources.usage()
    assert during["threads"] == before["threads"] + 1
    assert during["python_threads"] == before["python_threads"] + 1
  finally:
    stop.set()
    thread.join()


def test_live_children_and_zombies_count_apart():
  before = resources.usage()
  child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    assert resources.usage()["children"] == before["children"] + 1
  finally:
    child.kill()
  # Killed but not waited for: a zombie until wait() reaps it.
  _wait_for(lambda: resources.usage()["zombies"] == before["zombies"] + 1)
  assert resources.usage()["children"] == before["children"]
  child.wait()
  assert resources.usage()["zombies"] == before["zombies"]


def test_memory_figures():
  """In a fresh process: in this one, earlier tests' freed memory may serve the block."""
  code = (
      "import json; from mirl_jax import resources; a = resources.usage(); "
      "block = bytearray(64 * 2**20); block[::4096] = b'x' * len(block[::4096]); "
      "print(json.dumps([a, resources.usage()]))"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  before, after = json.loads(done.stdout.strip().splitlines()[-1])
  assert 0 < before["rss_mb"] <= before["peak_rss_mb"]
  assert after["rss_mb"] >= before["rss_mb"] + 60  # the block's pages, each written
  assert after["peak_rss_mb"] >= after["rss_mb"]


def test_record_replaces_a_round_recorded_again(tmp_path):
  resources.record(str(tmp_path), 1)
  resources.record(str(tmp_path), 0)
  entries = resources.record(str(tmp_path), 1)
  path = tmp_path / "resources" / "process_0.json"
  assert json.loads(path.read_text()) == entries == resources.read(str(tmp_path))
  assert [e["round"] for e in entries] == [0, 1]
  assert set(entries[0]) == {"round", *resources.usage()}
  assert not [p for p in path.parent.iterdir() if p != path]  # no temporary files left


class _Cycle:
  """Unreachable once made, but its file stays open until the collector reaches it."""

  def __init__(self):
    self.me, self.file = self, open(os.devnull, "rb")  # pylint: disable=consider-using-with


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the collected file was never closed
def test_record_counts_what_garbage_does_not_hold(tmp_path):
  baseline = resources.record(str(tmp_path), 0)[0]["open_fds"]
  gc.disable()  # the cycle must still be there when record runs
  try:
    _Cycle()
    assert resources.usage()["open_fds"] == baseline + 1
    assert resources.record(str(tmp_path), 1)[1]["open_fds"] == baseline
  finally:
    gc.enable()
