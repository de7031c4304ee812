"""Runs one mirl_jax job as N local processes, as a multi-host run would.

Each process gets its own CPU devices and joins the run over 127.0.0.1 with
gloo collectives; arguments after `--` go to `python -m mirl_jax.main`:

  python launch/local.py --processes 2 -- --config configs/demo.py --workdir runs/demo2
"""

import argparse
import os
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(
    processes: int, args: list[str], devices_per_process: int = 1, stderrs=None, **popen
) -> list[subprocess.Popen]:
  """Starts the processes and returns them; `stderrs`: one file per process, `popen`: more
  subprocess.Popen arguments."""
  address = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  env["XLA_FLAGS"] = " ".join(
      filter(
          None,
          [env.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={devices_per_process}"],
      )
  )
  return [
      subprocess.Popen(
          [
              sys.executable,
              "-m",
              "mirl_jax.main",
              f"--coordinator_address={address}",
              f"--num_processes={processes}",
              f"--process_id={i}",
              *args,
          ],
          env=env,
          stderr=stderrs[i] if stderrs else None,
          **popen,
      )
      for i in range(processes)
  ]


def launch(processes: int, args: list[str], devices_per_process: int = 1) -> int:
  """Starts the processes, waits for all; returns the first non-zero exit code."""
  codes = [p.wait() for p in start(processes, args, devices_per_process)]
  return next((c for c in codes if c), 0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("args", nargs=argparse.REMAINDER)
  opts = parser.parse_args()
  args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
  sys.exit(launch(opts.processes, args, opts.devices_per_process))


if __name__ == "__main__":
  main()
