r"""The one entry point: python -m mirl_jax.main --config FILE --workdir DIR [--mode M].

Config files define `get_config()` (ml_collections); any key can be set on
the command line as --config.a.b=value, and a mistyped key is an error that
suggests the right one. `--mode config` prints every key with its value and
meaning. Several processes (TPU pod hosts, SLURM tasks) join one run with
--distributed (or --coordinator_address, --num_processes, --process_id for a
hand-made cluster).
"""

import os

import numpy as np

from mirl_jax import runtime  # first: it sets XLA's flags before JAX starts

import jax  # pylint: disable=wrong-import-position,g-bad-import-order
from absl import app  # pylint: disable=wrong-import-position
from absl import flags
from ml_collections import config_flags

from mirl_jax import checkpointing
from mirl_jax import config_keys
from mirl_jax import convert
from mirl_jax import export
from mirl_jax import liveness
from mirl_jax import models
from mirl_jax import restore
from mirl_jax import serve
from mirl_jax import web_export
from mirl_jax import workdir_lock

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).", lock_config=True)
flags.DEFINE_string(
    "workdir", None, "Where tickets, checkpoints and logs live (every mode but config)."
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "evaluate", "restore", "import", "export", "serve", "prepare", "config"],
    "train: run (or resume) IMP; evaluate: a ticket on the test sets; "
    "restore: your images; import: a PyTorch checkpoint and its theta_0; "
    "export: a ticket as the reference's state dict, StableHLO or ONNX; serve: a web "
    "page that restores images in the browser; prepare: "
    "build the datasets the config names; config: print every config "
    "key with its value and meaning.",
)
flags.DEFINE_bool(
    "distributed",
    False,
    "jax.distributed.initialize() from the cluster's environment (TPU pods, SLURM).",
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Processes in the run.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.DEFINE_float(
    "heartbeat_timeout",
    60.0,
    "Seconds without a heartbeat after which a process of a multi-process run is "
    "declared lost: every other process then exits, naming it.",
)
flags.mark_flags_as_required(["config"])


def _process_0_says(ok: bool) -> bool:
  """Process 0's `ok`, on every process."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def run_train(config, workdir: str) -> None:
  from mirl_jax import train  # pylint: disable=import-outside-toplevel

  with workdir_lock.one_run(
      workdir, jax.process_index() == 0, _process_0_says, on_exit=liveness.on_exit
  ) as check_lock:
    train.train_and_evaluate(config, workdir, check_lock=check_lock)


def run_evaluate(config, workdir: str) -> None:
  """The ticket's reports as its round wrote them (same seed, same files), remade on demand."""
  from mirl_jax import pipeline, reports  # pylint: disable=import-outside-toplevel

  model = models.PromptIR(**config.model)
  index = None if config.eval.ticket < 0 else config.eval.ticket
  ticket = checkpointing.restore_ticket(workdir, index, model=model)
  r = ticket.meta.get(
      "round", index if index is not None else max(checkpointing.ticket_indices(workdir))
  )
  data = pipeline.run_data_config(config, workdir)
  pipeline.ensure_demo_data(data)
  if jax.process_index() == 0:  # evaluation is local work: one process does it for all
    images_dir = os.path.join(workdir, "eval", f"round_{r:02d}")
    reports.report_round(
        workdir,
        r,
        model,
        ticket.params,
        ticket.masks,
        data,
        config.eval.seed,
        images_dir=images_dir if config.eval.save_images else None,
    )
    print(f"Reports in {workdir}/eval/round_{r:02d}.md and .json")


def run_prepare(config, workdir: str) -> None:
  from mirl_jax import datasets, pipeline  # pylint: disable=import-outside-toplevel

  data = pipeline.run_data_config(config, workdir)
  if data.demo:
    pipeline.ensure_demo_data(data)
  else:
    datasets.prepare(data)
  print(f"Datasets ready in {data.data_dir}")


def run_import(config, workdir: str) -> None:
  counts = convert.import_checkpoint(
      config.import_from, workdir, models.PromptIR(**config.model), config.import_init
  )
  if config.import_init:
    print(f"Imported theta_0 {config.import_init} into {workdir}: every round rewinds to it")
  if config.import_from:
    print(
        f"Imported {config.import_from} into {workdir}: {counts['params']:,} "
        f"parameters, {counts['nonzero']:,} non-zero; prunable weights alive "
        f"{counts['alive']:,} of {counts['prunable']:,} "
        f"({100 * counts['remaining']:.2f}% remaining, "
        f"{100 * (1 - counts['remaining']):.2f}% pruned)"
    )


def run_export(config, workdir: str) -> None:
  cfg = config.export
  index = export.export_ticket(config, workdir)
  print(
      f"Exported ticket {index} of {workdir} to {cfg.output} ({cfg.format}"
      f"{', Lightning layout' if cfg.lightning else ''})"
  )


def run_serve(config, workdir: str) -> None:
  cfg = config.serve
  serve.check_runtime()  # before a ticket is read or exported
  model = models.PromptIR(**config.model)
  bundle = web_export.ticket_bundle(
      workdir, model, None if cfg.ticket < 0 else cfg.ticket, cfg.tile
  )
  serve.serve(bundle, host=cfg.host, port=cfg.port)


def run_restore(config, workdir: str) -> None:
  cfg = config.restore
  # Every check on inputs and outputs comes before the network is even read.
  jobs = restore.plan_outputs(
      [p for p in cfg.inputs.split(",") if p],
      cfg.output_dir,
      fmt=cfg.format,
      overwrite=cfg.overwrite,
  )
  model = models.PromptIR(**config.model)
  restore.check_tiling(cfg.tile, cfg.overlap)
  index = checkpointing.find_ticket(workdir, None if cfg.ticket < 0 else cfg.ticket)
  # Compiled before the ticket is read, so the compiler's memory and the params' never add up.
  restore.compile_forward(model, (restore.input_shape(job.size, cfg.tile) for job in jobs))
  params, _, _ = checkpointing.restore_ticket(workdir, index, model=model)
  written = restore.restore_files(
      restore.make_forward(model, params), jobs, tile=cfg.tile, overlap=cfg.overlap
  )
  print(f"Restored {len(written)} image(s) into {cfg.output_dir}")


def run_config(config, workdir: str) -> None:
  del workdir
  print(config_keys.describe(config, config_flags.get_config_filename(FLAGS["config"])))


MODES = {
    "train": run_train,
    "evaluate": run_evaluate,
    "restore": run_restore,
    "import": run_import,
    "export": run_export,
    "serve": run_serve,
    "prepare": run_prepare,
    "config": run_config,
}


def _checked(mode):
  """The mode, run only once every config value is valid: nothing is written before."""

  def run(config, workdir):
    config_keys.validate(config, mode)
    return MODES[mode](config, workdir)

  return run


def main(argv) -> None:
  if len(argv) > 1:
    runtime.fail(
        f"unexpected arguments {argv[1:]}: every setting is a flag (--config.KEY=VALUE)", 2
    )
  if FLAGS.mode != "config" and not FLAGS.workdir:
    runtime.fail(f"--mode {FLAGS.mode} needs --workdir=DIR", 2)
  runtime.setup(FLAGS["verbosity"].present)
  heartbeat = dict(
      heartbeat_timeout_seconds=liveness.jax_heartbeat_timeout(FLAGS.heartbeat_timeout)
  )
  if FLAGS.coordinator_address:
    jax.distributed.initialize(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, **heartbeat
    )
  elif FLAGS.distributed:
    jax.distributed.initialize(**heartbeat)
  liveness.start(FLAGS.heartbeat_timeout)
  try:
    runtime.run_cleanly(_checked(FLAGS.mode), FLAGS.config, FLAGS.workdir)
  except BaseException as e:  # pylint: disable=broad-except
    liveness.after_error(e)  # a multi-process run ends here, naming a lost process if one is
    raise


if __name__ == "__main__":
  app.run(main, flags_parser=runtime.parse_flags)
