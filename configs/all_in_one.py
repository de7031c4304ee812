r"""MIR-L as in the paper: all-in-one PromptIR, 15 rounds of 20% global IMP.

Import the official PyTorch checkpoint, then restore your own images:

  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/mirl \
    --mode import --config.import_from=/path/to/mirl.ckpt
  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/mirl \
    --mode restore --config.restore.inputs=photo.jpg,folder/ \
    --config.restore.output_dir=restored/
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # PromptIR(decoder=True) as MIR-L trains it (mirl_jax.models.PromptIR).
  config.model = ml_collections.ConfigDict(dict(
      dim=48,
      num_blocks=(4, 6, 6, 8),
      num_refinement_blocks=4,
      heads=(1, 2, 4, 8),
      ffn_expansion_factor=2.66,
      prompt_dims=(64, 128, 320),
      prompt_sizes=(64, 32, 16),
      prompt_length=5,
      noise_level_heads=4,
  ))

  # --mode import: a PyTorch .ckpt/.pth or an .npz of state-dict arrays.
  config.import_from = ""

  # --mode restore: image files and folders, comma-separated.
  config.restore = ml_collections.ConfigDict(dict(
      inputs="",
      output_dir="",
      ticket=-1,     # -1: the latest ticket in the workdir
      tile=512,      # larger images are restored in overlapping tiles
      overlap=32,
  ))
  return config
