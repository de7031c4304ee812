"""PromptIR (decoder prompts on), the restorer MIR-L prunes.

NHWC throughout. Submodule and parameter names mirror the PyTorch
state_dict (``encoder_level1.0.attn.qkv.weight`` lives at
``params['encoder_level1_0']['attn']['qkv']['kernel']``) so that checkpoints
convert by a fixed rule and the pruning code can name layers as the paper does.
Initialisers reproduce PyTorch's, since magnitude pruning from init depends
on the scale of every tensor.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  bound = 1.0 / fan_in ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(features: int, size: int = 1, groups: int = 1, name=None) -> nn.Conv:
  """A bias-free conv with PyTorch's padding (size // 2) and init."""
  pad = size // 2
  return nn.Conv(features, (size, size), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=False,
                 kernel_init=torch_kernel_init, name=name)


def layer_norm(name=None) -> nn.LayerNorm:
  """Restormer's "WithBias" LayerNorm: eps 1e-5, two-pass variance."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


def pixel_unshuffle(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, 4C); channel c*4 + i*2 + j is sub-pixel (i, j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)


def pixel_shuffle(x: jax.Array) -> jax.Array:
  """Inverse of pixel_unshuffle: (B, H, W, 4C) -> (B, 2H, 2W, C)."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, c, 2, 2)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """PyTorch's bilinear interpolate (align_corners=False): no antialiasing."""
  shape = (x.shape[0], height, width, x.shape[-1])
  return jax.image.resize(x, shape, "bilinear", antialias=False)


class Attention(nn.Module):
  """MDTA: attention across channels, so its cost is linear in pixels."""
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    temperature = self.param("temperature", nn.initializers.ones, (self.heads,))
    qkv = conv(3 * self.dim, 1, name="qkv")(x)
    qkv = conv(3 * self.dim, 3, groups=3 * self.dim, name="qkv_dwconv")(qkv)
    per_head = c // self.heads

    def heads_first(t):  # (B, H, W, C) -> (B, heads, C/heads, HW)
      return t.reshape(b, h * w, self.heads, per_head).transpose(0, 2, 3, 1)

    q, k, v = (heads_first(t) for t in jnp.split(qkv, 3, axis=-1))
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    attn = jnp.einsum("bhcn,bhdn->bhcd", q, k) * temperature[:, None, None]
    attn = jax.nn.softmax(attn, axis=-1)
    out = jnp.einsum("bhcd,bhdn->bhcn", attn, v)
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
    return conv(self.dim, 1, name="project_out")(out)


class FeedForward(nn.Module):
  """Gated depthwise-conv FFN with the exact (erf) GELU."""
  dim: int
  expansion: float

  @nn.compact
  def __call__(self, x):
    hidden = int(self.dim * self.expansion)
    x = conv(2 * hidden, 1, name="project_in")(x)
    x = conv(2 * hidden, 3, groups=2 * hidden, name="dwconv")(x)
    x1, x2 = jnp.split(x, 2, axis=-1)
    x = nn.gelu(x1, approximate=False) * x2
    return conv(self.dim, 1, name="project_out")(x)


class TransformerBlock(nn.Module):
  dim: int
  heads: int
  expansion: float

  @nn.compact
  def __call__(self, x):
    x = x + Attention(self.dim, self.heads, name="attn")(layer_norm("norm1")(x))
    return x + FeedForward(self.dim, self.expansion, name="ffn")(layer_norm("norm2")(x))


class PromptBlock(nn.Module):
  """Mixes learned prompt components by weights predicted from the feature."""
  prompt_dim: int
  length: int
  size: int
  lin_dim: int

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    prompt_param = self.param(
        "prompt_param", nn.initializers.uniform(1.0),
        (self.length, self.size, self.size, self.prompt_dim))
    emb = x.mean(axis=(1, 2))
    weights = nn.Dense(self.length, kernel_init=torch_kernel_init,
                       bias_init=torch_bias_init(self.lin_dim),
                       name="linear_layer")(emb)
    weights = jax.nn.softmax(weights, axis=-1)
    prompt = jnp.einsum("bl,lhwc->bhwc", weights, prompt_param)
    prompt = resize_bilinear(prompt, h, w)
    return conv(self.prompt_dim, 3, name="conv3x3")(prompt)


class PromptIR(nn.Module):
  """All-in-one restorer; defaults are MIR-L's PromptIR(decoder=True).

  Input and output: (B, H, W, 3) float32 in [0, 1], H and W multiples of 8.
  """
  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  num_refinement_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  ffn_expansion_factor: float = 2.66
  prompt_dims: Sequence[int] = (64, 128, 320)
  prompt_sizes: Sequence[int] = (64, 32, 16)
  prompt_length: int = 5
  noise_level_heads: int = 4
  out_channels: int = 3

  def _blocks(self, x, prefix, count, dim, heads):
    for i in range(count):
      x = TransformerBlock(dim, heads, self.ffn_expansion_factor,
                           name=f"{prefix}_{i}")(x)
    return x

  def _prompted(self, x, level, lin_dim, out_dim):
    """concat[x, prompt(x)] -> transformer block -> 1x1 conv."""
    p_dim, p_size = self.prompt_dims[level - 1], self.prompt_sizes[level - 1]
    prompt = PromptBlock(p_dim, self.prompt_length, p_size, lin_dim,
                         name=f"prompt{level}")(x)
    x = jnp.concatenate([x, prompt], axis=-1)
    x = TransformerBlock(lin_dim + p_dim, self.noise_level_heads,
                         self.ffn_expansion_factor, name=f"noise_level{level}")(x)
    return conv(out_dim, 1, name=f"reduce_noise_level{level}")(x)

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % 8 or x.shape[2] % 8:
      raise ValueError(
          f"PromptIR expects (B, H, W, 3) with H and W multiples of 8, got {x.shape}")
    c1, c2, c3, c4 = (self.dim * 2 ** i for i in range(4))
    n1, n2, n3, n4 = self.num_blocks
    h1, h2, h3, h4 = self.heads

    def down(t, name):
      return pixel_unshuffle(conv(t.shape[-1] // 2, 3, name=name)(t))

    def up(t, name):
      return pixel_shuffle(conv(t.shape[-1] * 2, 3, name=name)(t))

    e1 = self._blocks(conv(c1, 3, name="patch_embed")(x), "encoder_level1", n1, c1, h1)
    e2 = self._blocks(down(e1, "down1_2"), "encoder_level2", n2, c2, h2)
    e3 = self._blocks(down(e2, "down2_3"), "encoder_level3", n3, c3, h3)
    lat = self._blocks(down(e3, "down3_4"), "latent", n4, c4, h4)
    lat = self._prompted(lat, 3, c4, c3)

    d3 = jnp.concatenate([up(lat, "up4_3"), e3], axis=-1)
    d3 = self._blocks(conv(c3, 1, name="reduce_chan_level3")(d3), "decoder_level3", n3, c3, h3)
    d3 = self._prompted(d3, 2, c3, c3)

    d2 = jnp.concatenate([up(d3, "up3_2"), e2], axis=-1)
    d2 = self._blocks(conv(c2, 1, name="reduce_chan_level2")(d2), "decoder_level2", n2, c2, h2)
    d2 = self._prompted(d2, 1, c2, c2)

    d1 = jnp.concatenate([up(d2, "up2_1"), e1], axis=-1)
    d1 = self._blocks(d1, "decoder_level1", n1, c2, h1)
    d1 = self._blocks(d1, "refinement", self.num_refinement_blocks, c2, h1)
    return conv(self.out_channels, 3, name="output")(d1) + x
