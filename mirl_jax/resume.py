"""What a resumed run may change, and the refusal of anything else.

A run continues from its workdir only with the config it was made with, but for how it
logs, checkpoints, reads and evaluates, and how many rounds it runs: anything else would
mix two experiments in one series of tickets.
"""

import jax

_MAY_CHANGE = (
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "lottery.rounds",
    "train.microbatches",
    "model.scan_blocks",
    "model.remat",
    "data.manual_dir",
    "data.data_dir",
    "data.worker_count",
    "data.read_threads",
    "data.test_sets",
    "eval.",
    "restore.",
    "export.",
    "import_from",
    "import_init",
)


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


# Keys added since a run may have saved its config, with the value its code had.
_ADDED = {
    "model.dtype": "float32",
    "model.precision": "highest",
    "model.scan_blocks": True,
    "model.remat": "none",
    "train.microbatches": 1,
    "lottery.reference_pool": False,
    "train.clip_grad_norm": 0.0,
}


def config_changes(saved: dict, current: dict, per_device_batch: bool = False) -> list[str]:
  """'key: saved -> current' for each key that differs and may not change on resume.

  per_device_batch: `saved` is from before data.batch_size was the global batch;
  its batch is compared as this host's global batch (per device x devices).
  """
  old, new = dict(_ADDED), _flat(current)
  old.update(_flat(saved))
  if per_device_batch:
    old["data.batch_size"] *= jax.device_count()
  return [
      f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}"
      for k in sorted(set(old) | set(new))
      if old.get(k) != new.get(k) and not k.startswith(_MAY_CHANGE)
  ]


def check(workdir: str, saved: dict | None, current: dict) -> None:
  """Raises if `saved` (a checkpoint's or ticket's meta) has another experiment's config."""
  if saved is None or "config" not in saved:  # fresh, or imported tickets
    return
  per_device = saved.get("batch") != "global"  # saved when the batch was per device
  changes = config_changes(saved["config"], current, per_device_batch=per_device)
  hint = ""
  if per_device and any(c.startswith("data.batch_size:") for c in changes):
    b, n = saved["config"]["data"]["batch_size"], jax.device_count()
    hint = (
        f" (its data.batch_size={b} counted per device; data.batch_size is now the "
        f"global batch: --config.data.batch_size={b * n} continues it on {n} devices)"
    )
  if changes:
    raise ValueError(
        f"{workdir} holds a run made with another config (changed: "
        + "; ".join(changes)
        + ")"
        + hint
        + ": resume with the saved values, or use a new --workdir"
    )
