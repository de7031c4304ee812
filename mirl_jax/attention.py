"""MDTA's core, softmax(t * cos(q, k)) @ v across channels, with a hand-written VJP.

Restormer's attention normalises q and k over the pixels (F.normalize), scales
their C x C product by a learned temperature per head and takes a softmax over
channels. Autodiff of those steps leaves a training step with some forty small
kernels per transformer block (divisions, reductions and broadcasts over
(B, heads, C) shapes, forward, recomputed and backward), each compiled on its
own; the VJP below writes the same gradients in about half as many. The norms
divide the small C x C product instead of the full (B, N, heads, C) tensors:
two passes over the largest activations fewer, forward and backward.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp


def _forward(q, k, v, temperature, precision, eps):
  """Output and what the backward needs: the cosines, the probabilities, the norms."""
  gram = jnp.einsum(
      "bnhc,bnhd->bhcd", q, k, precision=precision, preferred_element_type=jnp.float32
  )
  sq, sk = (jnp.sum(jnp.square(t.astype(jnp.float32)), axis=1) for t in (q, k))  # (B, h, C)
  # max(||x||, eps) as F.normalize: pruning can empty a channel, whose norm is then eps.
  # One norm at a time: the product of two clamped norms (1e-24) is 0 in float32.
  nq, nk = (jnp.sqrt(jnp.maximum(s, eps * eps)) for s in (sq, sk))
  cos = gram / nq[..., :, None] / nk[..., None, :]
  probs = jax.nn.softmax(cos * temperature[:, None, None].astype(jnp.float32), axis=-1)
  probs = probs.astype(v.dtype)
  out = jnp.einsum("bhcd,bnhd->bnhc", probs, v, precision=precision)
  return out, (cos, probs, nq, nk, sq > eps * eps, sk > eps * eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def channel_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    temperature: jax.Array,
    precision: Any = "highest",
    eps: float = 1e-12,
) -> jax.Array:
  """(B, N, heads, C) q, k, v and (heads,) temperature -> (B, N, heads, C), in v's dtype.

  The softmax and the norms run in float32 whatever the compute dtype.
  """
  return _forward(q, k, v, temperature, precision, eps)[0]


def _fwd(q, k, v, temperature, precision, eps):
  out, saved = _forward(q, k, v, temperature, precision, eps)
  return out, (q, k, v, temperature, *saved)


def _bwd(precision, eps, residuals, g):
  """softmax's, the temperature's, the division's, then the two products' transposes.

  Where a norm was clamped (an emptied channel) it is a constant, as in autodiff
  of the clamp: no gradient flows through it.
  """
  del eps
  q, k, v, temperature, cos, probs, nq, nk, q_live, k_live = residuals
  f32 = jnp.float32
  dv = jnp.einsum("bhcd,bnhc->bnhd", probs, g, precision=precision)
  dprobs = jnp.einsum("bnhc,bnhd->bhcd", g, v, precision=precision, preferred_element_type=f32)
  p = probs.astype(f32)
  dlogits = p * (dprobs - jnp.sum(dprobs * p, axis=-1, keepdims=True))
  dtemperature = jnp.sum(dlogits * cos, axis=(0, 2, 3)).astype(temperature.dtype)
  dcos = dlogits * temperature[:, None, None].astype(f32)
  dgram = dcos / nq[..., :, None] / nk[..., None, :]
  # d cos / d nq = -cos / nq, and d nq / d q = q / nq where the norm is not clamped.
  weighted = dcos * cos
  scale_q = jnp.where(q_live, -jnp.sum(weighted, axis=-1) / (nq * nq), 0.0)
  scale_k = jnp.where(k_live, -jnp.sum(weighted, axis=-2) / (nk * nk), 0.0)
  per_pixel = lambda s: s[:, None]  # (B, h, C) -> (B, 1, h, C)
  dgram = dgram.astype(q.dtype)
  dq = jnp.einsum(
      "bhcd,bnhd->bnhc", dgram, k, precision=precision, preferred_element_type=f32
  ) + q.astype(f32) * per_pixel(scale_q)
  dk = jnp.einsum(
      "bhcd,bnhc->bnhd", dgram, q, precision=precision, preferred_element_type=f32
  ) + k.astype(f32) * per_pixel(scale_k)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dtemperature


channel_attention.defvjp(_fwd, _bwd)
