"""One style for the whole tree: pyink in Google's style (pyproject.toml, [tool.pyink])."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_tree_is_formatted():
  done = subprocess.run(
      [
          sys.executable,
          "-m",
          "pyink",
          "--check",
          "--diff",
          "mirl_jax",
          "configs",
          "benchmarks",
          "launch",
          "tests",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert done.returncode == 0, (
      "not formatted: run `python -m pyink mirl_jax configs benchmarks launch tests`\n"
      + done.stdout[-3000:]
      + done.stderr[-2000:]
  )
