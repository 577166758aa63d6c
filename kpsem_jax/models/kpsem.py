"""KPSEM, the Key Point Shifts Embedding Module (paper section 3.2 and 4.2).

G AReSE sets, each with its own centre MLP and its own linear embedding (2 -> d_e), run as
one ``jax.vmap`` over parameters stacked along a leading G axis; their embeddings are
summed, then two (1, 3)/(1, 2) convolutions over the (T-1, d_e) plane reduce d_e 24 -> 12
-> 6 and the channels C -> 96, an average pool over the embedding axis leaves
``(T-1) x 96``, flattened: 7 x 96 = 672 features for MFNet conv4 on 16 frames.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kpsem_jax.models import arese as arese_lib
from kpsem_jax.models.layers import Conv


def sort_frames(features: jax.Array) -> jax.Array:
  """``(B, T, H, W, C)`` with each clip's T frames sorted by their mean value: an order that
  is the same for a clip and its time reversal (frames of equal means keep time order)."""
  order = jnp.argsort(jnp.mean(features, axis=(2, 3, 4)), axis=1, stable=True)
  return jnp.take_along_axis(features, order[:, :, None, None, None], axis=1)


def _stacked(init):
  """An initializer for a ``(G, fan_in, fan_out)`` stack of independent matrices."""
  return init(in_axis=-2, out_axis=-1, batch_axis=(0,))


class KPSEM(nn.Module):
  """Temporal features from a backbone stage ``(B, T, H, W, C) -> (B, (T-1) * C_red)``.

  Attributes:
    num_regions: K regions per frame (1, 4, 9, 16: a k x k grid).
    num_sets: G AReSE sets.
    embed_dim: d_e of the per-set linear embedding.
    adaptive: MLP-predicted split lines; False: per-set random split lines fixed at
      initialisation (the paper's "fixed regions" ablation), from ``fixed_regions_seed``.
    mlp_hidden: hidden width of each set's centre MLP.
    reduction_channels: output channels of the (1, 3)/(1, 2) reduction convolutions.
    mask_temperature: region-mask softness in feature-map pixels (0: hard regions).
    shift_epsilon: the 0.1 of Eq. 9.
    match_gradient: where Eq. 9's match weights pass their gradient: ``"paper"`` (everywhere:
      the derivative of our soft-mask forward), ``"splits"`` (to the split lines only, the
      default) or ``"stopped"`` (nowhere); :func:`kpsem_jax.models.arese.key_point_shifts`.
    sum_regions: Eq. 12's regional key point shifts summed over the K regions (the default),
      or kept per region (K x C channels into the embedding and reduction).
    frame_order: ``"time"`` (the clip's order) or ``"sorted"`` (a control: AReSE sees each
      clip's feature frames sorted by their mean activation, an order that time reversal
      does not change, so KPSEM cannot tell a clip from its reversal; same parameters).
    conv_strategy: ``layers.conv``'s strategy for the reduction convolutions.
    argmax_strategy: AReSE's regional argmax (:func:`kpsem_jax.models.arese.regional_argmax`):
      ``jnp`` or ``cpu_kernel``; ``create_model`` passes the model's one ``cpu_kernels``
      decision, and checks there (not at trace time) that a one-set KPSEM runs with
      XLA:CPU's YNNPACK fusions off (``jax_options``).
  Intermediates (``mutable=["intermediates"]``): ``arese`` holds the
  :class:`~kpsem_jax.models.arese.AReSEOutput` of every set with leading ``(G, B)`` axes.
  """
  num_regions: int = 4
  num_sets: int = 8
  embed_dim: int = 24
  adaptive: bool = True
  mlp_hidden: int = 16
  reduction_channels: Sequence[int] = (96, 96)
  mask_temperature: float = 0.1
  shift_epsilon: float = 0.1
  match_gradient: str = "splits"
  sum_regions: bool = True
  frame_order: str = "time"
  fixed_regions_seed: int = 0
  conv_strategy: str = "auto"
  argmax_strategy: str = "jnp"

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    b, t, _, _, c = features.shape
    if t < 2:
      raise ValueError(f"KPSEM needs at least 2 frames in its input feature map, got T={t}")
    k = arese_lib.grid_size(self.num_regions)
    g, n_split = self.num_sets, k - 1
    f32 = features.astype(jnp.float32)
    if self.frame_order == "sorted":
      f32 = sort_frames(f32)
    elif self.frame_order != "time":
      raise ValueError(f"unknown frame_order {self.frame_order!r}; choose 'time' or 'sorted'")

    if self.adaptive and n_split:
      mlp = (self.param("mlp_w1", _stacked(nn.initializers.lecun_normal), (g, c, self.mlp_hidden)),
             self.param("mlp_b1", nn.initializers.zeros, (g, self.mlp_hidden)),
             self.param("mlp_w2", nn.initializers.zeros, (g, self.mlp_hidden, 2 * n_split)),
             self.param("mlp_b2", nn.initializers.zeros, (g, 2 * n_split)))
      logits = jax.vmap(jax.vmap(arese_lib.centre_mlp, in_axes=(0, None, None, None, None)),
                        in_axes=(None, 0, 0, 0, 0))(f32, *mlp)  # (G, B, T, 2, k-1)
    else:
      fixed = jax.random.normal(jax.random.PRNGKey(self.fixed_regions_seed), (g, 1, 1, 2, n_split))
      logits = jnp.broadcast_to(fixed, (g, b, t, 2, n_split))

    emb_w = self.param("embed_w", _stacked(nn.initializers.lecun_normal), (g, 2, self.embed_dim))
    emb_b = self.param("embed_b", nn.initializers.zeros, (g, self.embed_dim))

    def one_set(set_logits, w, bias):
      out = jax.vmap(arese_lib.arese, in_axes=(0, 0, None, None, None, None, None))(
          f32, set_logits, self.mask_temperature, self.shift_epsilon, self.argmax_strategy,
          self.match_gradient, self.sum_regions)
      rkps = out.rkps.reshape(b, t - 1, -1, 2)  # per region: K x C channels
      return out, rkps @ w + bias  # (B, T-1, C or K*C, d_e)

    outputs, embedded = jax.vmap(one_set)(logits, emb_w, emb_b)
    self.sow("intermediates", "arese", outputs)
    h = jnp.sum(embedded, axis=0).transpose(0, 1, 3, 2)  # (B, T-1, d_e, C)
    h = h.astype(features.dtype)
    for i, channels in enumerate(self.reduction_channels):
      h = nn.relu(Conv(channels, (1, 3), (1, 2), padding=((0, 0), (1, 1)), use_bias=True,
                       conv_strategy=self.conv_strategy, name=f"reduce{i + 1}")(h))
    return jnp.mean(h, axis=2).reshape(b, -1)  # (B, (T-1) * C_red)
