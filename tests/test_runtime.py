"""What every command shares: clean user errors, configs found from any folder."""

import subprocess
import sys
from pathlib import Path

import pytest

from mirl_jax import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_user_errors_end_the_process_with_one_line():
  def bad():
    raise ValueError("config.model.dim=-1: expected a positive width")

  with pytest.raises(SystemExit) as stop:
    runtime.run_cleanly(bad)
  assert str(stop.value) == "error: config.model.dim=-1: expected a positive width"


@pytest.mark.parametrize(
    "error, line",
    [
        (
            OSError(28, "No space left on device", "/w/summary.json"),
            "error: could not write /w/summary.json (ENOSPC: No space left on device)",
        ),
        (
            OSError(5, "Input/output error"),
            "error: could not write a file (the error names none) (EIO: Input/output error)",
        ),
    ],
)
def test_a_failed_write_ends_the_process_with_one_line(error, line):
  def write():
    raise error

  with pytest.raises(SystemExit) as stop:
    runtime.run_cleanly(write)
  assert str(stop.value) == line


def test_programming_errors_keep_their_traceback():
  def broken():
    raise KeyError("a bug, not bad input")

  with pytest.raises(KeyError):
    runtime.run_cleanly(broken)


def test_configs_that_import_each_other_load_from_any_folder(tmp_path):
  done = subprocess.run(
      [
          sys.executable,
          "-m",
          "mirl_jax.main",
          f"--config={ROOT / 'configs' / 'demo.py'}",
          f"--workdir={tmp_path / 'run'}",
          "--mode=restore",
      ],
      capture_output=True,
      text=True,
      cwd=tmp_path,
      timeout=120,
  )
  assert "ModuleNotFoundError" not in done.stderr
  assert "--mode restore needs --config.restore.inputs" in done.stderr  # the config loaded
