r"""MIR-L's single-task variant: Gaussian denoising alone (sigma 15, 25, 50 on WED + BSD400; tests BSD68, Urban100).

  python -m mirl_jax.main --config configs/denoise.py --workdir runs/denoise \
    --config.data.manual_dir=data/mirl
"""

from configs import all_in_one


def get_config():
  config = all_in_one.get_config()
  config.data.train_sets = ("denoise/WED", "denoise/BSD400")
  config.data.test_sets = ("denoise/BSD68", "denoise/Urban100")
  return config
