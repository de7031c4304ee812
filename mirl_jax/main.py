r"""The one entry point: python -m mirl_jax.main --config FILE --workdir DIR --mode M.

Config files define `get_config()` (ml_collections); any key can be set on
the command line as --config.a.b=value, and a mistyped key is an error.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mirl_jax import checkpointing
from mirl_jax import convert
from mirl_jax import models
from mirl_jax import restore

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where tickets, checkpoints and logs live.")
flags.DEFINE_enum("mode", None, ["import", "restore"],
                  "import: a PyTorch checkpoint into the workdir; "
                  "restore: your images with the workdir's latest ticket.")
flags.mark_flags_as_required(["config", "workdir", "mode"])


def run_import(config, workdir: str) -> None:
  if not config.import_from:
    raise app.UsageError("--mode import needs --config.import_from=FILE "
                         "(.ckpt, .pth or .npz)")
  counts = convert.import_checkpoint(config.import_from, workdir,
                                     models.PromptIR(**config.model))
  print(f"Imported {config.import_from} into {workdir}: {counts['params']:,} "
        f"parameters, {counts['nonzero']:,} non-zero; prunable weights alive "
        f"{counts['alive']:,} of {counts['prunable']:,} "
        f"({100 * counts['remaining']:.2f}% remaining, "
        f"{100 * (1 - counts['remaining']):.2f}% pruned)")


def run_restore(config, workdir: str) -> None:
  cfg = config.restore
  if not cfg.inputs or not cfg.output_dir:
    raise app.UsageError("--mode restore needs --config.restore.inputs=PATH[,PATH...] "
                         "and --config.restore.output_dir=DIR")
  model = models.PromptIR(**config.model)
  index = None if cfg.ticket < 0 else cfg.ticket
  params, masks, _ = checkpointing.restore_ticket(workdir, index, model=model)
  del masks  # a ticket's pruned weights are stored as zeros
  inputs = [p for p in cfg.inputs.split(",") if p]
  written = restore.restore_files(restore.make_forward(model, params), inputs,
                                  cfg.output_dir, tile=cfg.tile, overlap=cfg.overlap)
  print(f"Restored {len(written)} image(s) into {cfg.output_dir}")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # Orbax logs every step at INFO
    logging.set_verbosity(logging.WARNING)
  modes = {"import": run_import, "restore": run_restore}
  try:
    modes[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except ValueError as e:  # bad input: a clear message, no traceback
    raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
  app.run(main)
