r"""MIR-L as in the paper: all-in-one PromptIR, 1 dense + 15 rounds of 20% global IMP.

Build the datasets from MIR-L's archive (unpacked into data/mirl), then train:

  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/all_in_one \
    --mode prepare --config.data.manual_dir=data/mirl
  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/all_in_one \
    --config.data.manual_dir=data/mirl

Or import the official PyTorch checkpoint and restore your own images:

  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/mirl \
    --mode import --config.import_from=/path/to/mirl.ckpt \
    --config.import_init=/path/to/initial_state_dict.pth
  python -m mirl_jax.main --config configs/all_in_one.py --workdir runs/mirl \
    --mode restore --config.restore.inputs=photo.jpg,folder/ \
    --config.restore.output_dir=restored/
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  # fmt: off
  config = ml_collections.ConfigDict()
  config.seed = 0  # the init PRNG key: rewinding re-creates theta_0 from it

  # PromptIR(decoder=True) as MIR-L trains it (mirl_jax.models.PromptIR).
  config.model = ml_collections.ConfigDict(dict(
      dim=48,                          # channels of level 1; levels 2-4 double it
      num_blocks=(4, 6, 6, 8),         # transformer blocks per level, encoder and decoder
      num_refinement_blocks=4,         # transformer blocks after the decoder
      heads=(1, 2, 4, 8),              # attention heads per level
      ffn_expansion_factor=2.66,       # hidden width of the feed-forward, times dim
      prompt_dims=(64, 128, 320),      # channels of the three prompt blocks
      prompt_sizes=(64, 32, 16),       # spatial size of the learned prompt components
      prompt_length=5,                 # prompt components mixed per block
      noise_level_heads=4,             # heads of the blocks after each prompt
      dtype="float32",                 # compute dtype; "bfloat16": mixed precision (params,
                                       # optimizer state and loss stay float32)
      precision="highest",             # matmul/conv precision: "highest" is float32 on TPUs
                                       # and GPUs too, as the reference; "default" is faster
      scan_blocks=True,                # each run of identical blocks compiled once (lax.scan)
      remat="blocks",                  # keep only each scanned block's input for the backward and
                                       # recompute the rest ("none": keep all; slower here)
  ))

  # Data (mirl_jax.datasets, mirl_jax.pipeline).
  config.data = ml_collections.ConfigDict(dict(
      demo=False,                      # True: the embedded demo dataset, built in data_dir
      manual_dir="data/mirl",          # MIR-L's unpacked archive, read by --mode prepare
      data_dir="data/tfds",            # the prepared datasets (TFDS, ArrayRecord)
      train_sets=("denoise/WED", "denoise/BSD400", "derain/Rain100L", "dehaze/OTS"),  # "task/Set"
      test_sets=("denoise/BSD68", "denoise/Urban100", "derain/Rain100L", "dehaze/SOTS"),  # "task/Set"
      batch_size=8,                    # training patches per step, over all devices
      patch_size=64,                   # side of the square training patches (a multiple of 8)
      sigmas=(15, 25, 50),             # Gaussian noise levels, training and test
      repeats=dict(denoise=3, derain=120, dehaze=1),  # times each task's images enter an epoch
      worker_count=2,                  # Grain worker processes (0: in the main process)
      read_threads=2,                  # threads reading records per worker
  ))

  # One round of training (AdamW as PyTorch's, the reference's warmup + cosine per epoch).
  config.train = ml_collections.ConfigDict(dict(
      epochs=120,                      # per round
      warmup_epochs=15,                # linear warmup from 0, then cosine to 0
      learning_rate=2e-4,              # peak learning rate
      weight_decay=0.01,               # AdamW's, as PyTorch's default (optax's is 1e-4)
      clip_grad_norm=0.0,              # > 0: each step's gradient scaled down to this global
                                       # L2 norm (0: none, as the reference)
      lr_per_epoch=True,               # False: the same curve evaluated per step
      log_every_steps=50,              # TensorBoard scalars
      checkpoint_every_steps=1000,     # mid-round checkpoints (the newest two kept)
      microbatches=1,                  # split each device's batch to bound memory (same update)
  ))

  # Iterative magnitude pruning.
  config.lottery = ml_collections.ConfigDict(dict(
      rounds=15,                       # pruned rounds after the dense round 0
      percent=20.0,                    # of the surviving weights, per round
      scope="global",                  # or "layerwise" (the output conv at half the rate)
      rewind="init",                   # "init" (the paper), "late" (params at step late_step
                                       # of round 0) or "random" (re-initialised survivors)
      late_step=0,                     # with rewind="late": the step of round 0 (>= 1)
      keep_trained_prompts=False,      # True: prompt_param and temperature keep their
                                       # trained values, as the official code does
      reference_pool=False,            # True: the global threshold also counts the six
                                       # unused convs, as the official code does
  ))

  # Evaluation after every round (--mode evaluate: of a ticket in the workdir).
  config.eval = ml_collections.ConfigDict(dict(
      seed=0,                          # the fixed noise of the denoising test inputs
      ticket=-1,                       # --mode evaluate: -1 is the latest ticket
      save_images=False,               # restored PNGs under WORKDIR/eval/round_RR/
  ))

  # --mode import: a PyTorch .ckpt/.pth or an .npz of state-dict arrays.
  config.import_from = ""  # the checkpoint file to import into an empty workdir
  config.import_init = ""  # its run's initial_state_dict.pth (theta_0): rounds rewind to it

  # --mode export: a ticket as the reference's state dict, or its forward as a graph.
  config.export = ml_collections.ConfigDict(dict(
      format="torch",                  # "torch" (torch.save), "npz" (numpy.savez): state dicts;
                                       # "stablehlo" (jax.export), "onnx": the forward, weights in
      output="",                       # the file to write
      ticket=-1,                       # -1: the latest ticket in the workdir
      lightning=False,                 # torch only: Lightning's .ckpt layout ("net." keys)
      tile=256,                        # onnx only: the fixed (1, tile, tile, 3) input it takes
      overwrite=False,                 # True: replace an existing output file
  ))

  # --mode restore: your own images with a ticket of the workdir.
  config.restore = ml_collections.ConfigDict(dict(
      inputs="",                       # image files and folders, comma-separated
      output_dir="",                   # where restored images go (never an input folder)
      overwrite=False,                 # True: replace outputs already in output_dir
      format="same",                   # "same" (JPEG and WebP keep theirs, others PNG), "png", "jpg"
      ticket=-1,                       # -1: the latest ticket in the workdir
      tile=512,                        # larger images are restored in overlapping tiles
      overlap=32,                      # pixels shared by neighbouring tiles
  ))

  # --mode serve: a web page that restores images in the browser, with a ticket of the workdir.
  config.serve = ml_collections.ConfigDict(dict(
      host="127.0.0.1",                # the address to bind: this machine only by default
      port=8000,                       # 0: any free port
      ticket=-1,                       # -1: the latest ticket in the workdir
      tile=256,                        # the page restores images in tiles of this side
  ))
  # fmt: on
  return config
