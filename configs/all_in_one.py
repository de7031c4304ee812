r"""MIR-L as in the paper: all-in-one PromptIR, 1 dense + 15 rounds of 20% global IMP.

Build the datasets from MIR-L's archive (unpacked into data/mirl), then train:

  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/all_in_one \
    --mode prepare --config.data.manual_dir=data/mirl
  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/all_in_one \
    --config.data.manual_dir=data/mirl

Or import the official PyTorch checkpoint and restore your own images:

  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/mirl \
    --mode import --config.import_from=/path/to/mirl.ckpt
  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/mirl \
    --mode restore --config.restore.inputs=photo.jpg,folder/ \
    --config.restore.output_dir=restored/
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # the init PRNG key: rewinding re-creates theta_0 from it

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

  # Data (mirl_jax.datasets, mirl_jax.pipeline). batch_size is per device.
  config.data = ml_collections.ConfigDict(dict(
      demo=False,  # True: build the embedded demo dataset into data_dir, no download
      manual_dir="data/mirl",
      data_dir="data/tfds",
      train_sets=("denoise/WED", "denoise/BSD400", "derain/Rain100L", "dehaze/OTS"),
      test_sets=("denoise/BSD68", "denoise/Urban100", "derain/Rain100L", "dehaze/SOTS"),
      batch_size=8,
      patch_size=64,
      sigmas=(15, 25, 50),
      repeats=dict(denoise=3, derain=120, dehaze=1),
      worker_count=2,
      read_threads=2,
  ))

  # One round of training (AdamW as PyTorch's, the reference's warmup + cosine per epoch).
  config.train = ml_collections.ConfigDict(dict(
      epochs=120,
      warmup_epochs=15,
      learning_rate=2e-4,
      weight_decay=0.01,
      lr_per_epoch=True,  # False: the same curve evaluated per step
      log_every_steps=50,
      checkpoint_every_steps=1000,
  ))

  # Iterative magnitude pruning.
  config.lottery = ml_collections.ConfigDict(dict(
      rounds=15,              # pruned rounds after the dense round 0
      percent=20.0,           # of the surviving weights, per round
      scope="global",         # or "layerwise" (the output conv at half the rate)
      rewind="init",          # "init" (the paper), "late" (params at step late_step
                              # of round 0) or "random" (re-initialised survivors)
      late_step=0,
      keep_trained_prompts=False,  # True: prompt_param and temperature keep their
                                   # trained values, as the official code does
  ))

  # Evaluation after every round (--mode evaluate: of a ticket in the workdir).
  config.eval = ml_collections.ConfigDict(dict(
      seed=0,            # the fixed noise of the denoising test inputs
      ticket=-1,         # --mode evaluate: -1 is the latest ticket
      save_images=False, # restored PNGs under WORKDIR/eval/<ticket>/
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
