"""What this process holds after each round: memory, open files, threads, child processes.

A real run trains 16 rounds over days, and every round re-creates its data iterators (Grain,
maybe with worker processes), TensorBoard writers, compiled functions and matplotlib figures.
Anything of these that a round leaves behind grows with the rounds and ends a long run late, so
`record` appends this process's figures after every round to
WORKDIR/resources/process_<jax.process_index()>.json (tests/test_soak.py checks that none grows
after the second round; benchmarks/soak.py plots them).

`record` takes them after a full garbage collection: a round's Grain iterator, for one, sits in
reference cycles that keep its record files open until the collector reaches them, so without it
the open files would rise and fall with the collector's schedule rather than with what the run
holds.

The figures (`usage`), None where the platform does not have them (off Linux):
  rss_mb: resident memory now, MB (MiB; VmRSS of /proc/self/status).
  peak_rss_mb: the most resident memory so far, MB (ru_maxrss of getrusage, never below rss_mb:
    the kernel adds up its threads' page counts in batches, so it can trail VmRSS a little).
  open_fds: open file descriptors (files, sockets, pipes, event files) in /proc/self/fd, the
    listing's own one included.
  threads: OS threads of this process (/proc/self/task), the runtime's pools (XLA, Grain's
    readers, tensorboardX's writer) included; off Linux, python_threads.
  python_threads: the threads Python knows of (threading.active_count()).
  children: live child processes: each /proc/PID/stat whose parent is this process, zombies left
    out. Grain's workers live only within a round; with workers, multiprocessing's
    resource_tracker stays from the first round on (1).
  zombies: children that exited but were never waited for (each holds a process slot).
"""

import gc
import os
import resource
import sys
import threading
from pathlib import Path

import jax

from mirl_jax import reports

FOLDER = "resources"


def _rss_mb() -> float | None:
  try:
    with open("/proc/self/status", encoding="ascii") as status:
      for line in status:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return None


def _peak_rss_mb() -> float:
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KiB on Linux


def _count(folder: str) -> int | None:
  try:
    return len(os.listdir(folder))
  except OSError:
    return None


def _children() -> tuple[int | None, int | None]:
  """(live, zombie) processes whose parent is this one; (None, None) without /proc."""
  try:
    pids = [name for name in os.listdir("/proc") if name.isdigit()]
  except OSError:
    return None, None
  me, live, zombies = os.getpid(), 0, 0
  for pid in pids:
    try:
      with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        text = stat.read()
    except OSError:  # it exited since the listing
      continue
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) > 1 and int(fields[1]) == me:
      if fields[0] == "Z":
        zombies += 1
      else:
        live += 1
  return live, zombies


def usage() -> dict:
  """This process's figures now (see the module docstring)."""
  python_threads = threading.active_count()
  os_threads = _count("/proc/self/task")
  children, zombies = _children()
  rss = _rss_mb()
  return dict(
      rss_mb=rss,
      peak_rss_mb=_peak_rss_mb() if rss is None else max(_peak_rss_mb(), rss),
      open_fds=_count("/proc/self/fd"),
      threads=python_threads if os_threads is None else os_threads,
      python_threads=python_threads,
      children=children,
      zombies=zombies,
  )


def path(workdir: str, process_index: int | None = None) -> Path:
  """WORKDIR/resources/process_<i>.json; i: this process's jax.process_index() by default."""
  index = jax.process_index() if process_index is None else process_index
  return Path(workdir) / FOLDER / f"process_{index}.json"


def record(workdir: str, round_index: int) -> list[dict]:
  """Adds this process's figures after round `round_index` to its file, atomically, after a
  garbage collection; a round recorded before (a resumed run reports it again) is replaced.
  Returns all entries."""
  gc.collect()
  entry = {"round": round_index, **usage()}
  return reports.update_entries(path(workdir), entry, key=lambda e: e["round"])


def read(workdir: str, process_index: int = 0) -> list[dict]:
  """The entries of a process's file by round; [] if there is none."""
  return reports.read_entries(path(workdir, process_index))
