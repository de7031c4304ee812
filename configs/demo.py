r"""The whole method in minutes on a laptop CPU: a tiny PromptIR, the embedded demo data.

python -m mirl_jax.main --config configs/demo.py --workdir runs/demo
"""

from configs import all_in_one


def get_config():
  # fmt: off
  config = all_in_one.get_config()
  config.model.update(dict(dim=8, num_blocks=(1, 1, 1, 2), num_refinement_blocks=1,
                           heads=(1, 1, 2, 2), prompt_dims=(8, 16, 16),
                           prompt_sizes=(16, 8, 4), noise_level_heads=1))
  config.data.update(dict(demo=True,
                          manual_dir="",  # "": the demo's raw images, inside the workdir
                          data_dir="",  # "": the demo's datasets, inside the workdir
                          train_sets=(),  # (): the demo's sets
                          test_sets=(),  # (): the demo's sets
                          patch_size=32,  # a quarter of the compute of 64
                          # 150 noisy, 180 rainy, 40 hazy patches an epoch: haze's large errors
                          # otherwise drown the rest (4/12/12: 0.7-1.5 dB less on every task)
                          repeats=dict(denoise=5, derain=18, dehaze=4), worker_count=0))
  config.train.update(dict(epochs=8, warmup_epochs=1, learning_rate=4e-3,
                           lr_per_epoch=False,  # warmup and cosine per step: the reference's
                                                # per-epoch steps leave epoch 1 of 8 at lr 0
                           clip_grad_norm=1.0,  # steadies the rounds at this learning rate
                           log_every_steps=10, checkpoint_every_steps=100))
  config.lottery.rounds = 3
  # fmt: on
  return config
