"""What each trainable stage sees, predicts and is scored on.

A stage couples a Flax model with the stacked-hypothesis layout (every stage's
variables carry a leading hypothesis axis H, H = 1 for single models), the way
its inputs are made from a data batch on the device (crops per hypothesis,
skeleton maps rendered by the rasterizer, or maps predicted by a frozen
SkeletonMapNet), and its loss. The trainer (train.py), the evaluator and the
benchmark all go through these definitions.

Stages:
  skeleton_net: RGB crop at c_i -> fg/bg skeleton maps of stick width l_i.
  regressor:    skeleton maps (rendered from labels, or predicted) -> 3D pose.
  direct_rgb:   RGB crop at c=1 -> 3D pose (the paper's baseline).
  ensemble:     n regressors of the base hypothesis, different seeds.
  hourglass:    RGB crop at c=1 -> 2D heatmaps (for matching and PCKh).
  lifting:      2D joints -> 3D pose (pseudo-3D labels for MPII; a baseline).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepskeleton_jax.training import config_lib
from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.models import hourglass
from deepskeleton_jax.models import hypotheses
from deepskeleton_jax.models import lifting
from deepskeleton_jax.models import regressor
from deepskeleton_jax.models import skeleton_net

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _dtype(name: str):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 normalised with the ImageNet statistics."""
  x = images.astype(jnp.float32) / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def root_relative(joints_3d: jax.Array) -> jax.Array:
  return joints_3d - joints_3d[..., skeleton.ROOT:skeleton.ROOT + 1, :]


def images_at(batch: dict[str, jax.Array], crop_idx: np.ndarray) -> jax.Array:
  """Normalised crops per hypothesis: [b, C, S, S, 3] uint8 -> [H, b, S, S, 3]."""
  return jnp.moveaxis(normalize_images(batch['image'][:, crop_idx]), 1, 0)


def resize_square(x: jax.Array, size: int) -> jax.Array:
  """Bilinear resize of [..., h, w, c] to [..., size, size, c]."""
  if x.shape[-2] == size and x.shape[-3] == size:
    return x
  shape = x.shape[:-3] + (size, size, x.shape[-1])
  return jax.image.resize(x, shape, method='bilinear')


@dataclasses.dataclass(frozen=True)
class Stage:
  """A trainable stage.

  Attributes:
    name: the stage name (a config group).
    model: the Flax module of one hypothesis.
    num_hyps: H, the size of the leading axis of the stacked variables.
    make_inputs: (batch, aux_variables, norm) -> (inputs [H, b, ...], targets
      pytree with leading [H, b]); runs inside jit. `aux_variables` are the
      stacked variables of the stage named by `needs`; `norm` the pose
      normalisation {'mean': [16, 3], 'std': []}.
    loss: (model outputs of one hypothesis, targets of that hypothesis, batch)
      -> (scalar loss, metrics dict); runs inside vmap over hypotheses.
    predict: (model outputs of one hypothesis, norm) -> the stage's prediction
      (poses in mm, maps in [0, 1], heatmaps).
    dummy_input: a one-example input of one hypothesis, for init.
    needs: the stage whose trained variables `make_inputs` uses, or None.
    pose_norm: whether the targets are poses normalised by dataset statistics.
  """
  name: str
  model: nn.Module
  num_hyps: int
  make_inputs: Callable[..., Any]
  loss: Callable[..., Any]
  predict: Callable[..., Any]
  dummy_input: np.ndarray
  needs: str | None = None
  pose_norm: bool = False
  hyp_map: str = 'vmap'


def crop_indices(config: ml_collections.ConfigDict) -> np.ndarray:
  """For each hypothesis, the index of its crop scale in `data.crop_scales`."""
  scales = list(config.data.crop_scales)
  return np.array([scales.index(c) for c, _ in config_lib.hypothesis_list(config)],
                  np.int32)


def unit_crop_index(config: ml_collections.ConfigDict) -> int:
  return list(config.data.crop_scales).index(1.0)


def map_size(config: ml_collections.ConfigDict) -> int:
  """Skeleton maps are a quarter of the input side (56 for 224)."""
  return config.data.input_size // 4


def render_maps(batch: dict[str, jax.Array], crop_idx: np.ndarray,
                widths_224: np.ndarray, input_size: int, size: int) -> jax.Array:
  """Renders ground-truth fg/bg maps per hypothesis on the device.

  Args:
    batch: with `joints_2d` [b, C, 16, 2] (input pixels), `joints_3d`, `visible`.
    crop_idx: [H] crop-scale index per hypothesis.
    widths_224: [H] stick widths in 224-px input pixels.
    input_size: model input side the joints are given in.
    size: map side.

  Returns:
    [H, b, size, size, 6] float32 (fg RGB, bg RGB).
  """
  joints = jnp.moveaxis(batch['joints_2d'][:, crop_idx], 1, 0) * (size / input_size)
  h = len(crop_idx)
  depth = jnp.broadcast_to(batch['joints_3d'][..., 2], (h,) + batch['visible'].shape)
  visible = jnp.broadcast_to(batch['visible'], depth.shape)
  widths = jnp.asarray(widths_224, jnp.float32)[:, None] * (size / 224.0)
  fg, bg = rasterize.skeleton_maps(joints, depth, widths, size, visible=visible)
  return jnp.concatenate([fg, bg], axis=-1)


def hyp_map_method(config: ml_collections.ConfigDict) -> str:
  """'vmap' or 'loop' from `config.parallel.hyp_map` ('auto': loop on CPU)."""
  method = config.parallel.hyp_map
  if method == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return method


def _pose_targets(batch, norm):
  target = root_relative(batch['joints_3d'])
  target = (target - norm['mean']) / norm['std']
  weight = batch['has_3d'].astype(jnp.float32)
  return {'pose': target, 'weight': weight}


def _pose_loss(pred, targets, batch):
  del batch
  diff = pred.astype(jnp.float32) - targets['pose']
  # Clamped as in regressor.pose_loss: the lifting MLP's root joint equals its
  # target (both 0) exactly, where the plain norm's gradient is NaN.
  dist = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), axis=-1), 1e-12)).mean(-1)
  w = targets['weight']
  loss = jnp.sum(dist * w) / jnp.maximum(jnp.sum(w), 1.0)
  return loss, {}


def _pose_predict(pred, norm):
  return pred.astype(jnp.float32) * norm['std'] + norm['mean']


def _resnet_kwargs(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(stage_sizes=tuple(model_cfg.stage_sizes), width=model_cfg.width,
              dtype=_dtype(model_cfg.dtype), remat=model_cfg.remat)


def build(config: ml_collections.ConfigDict, name: str) -> Stage:
  """Builds the named stage from a finalised config.

  Args:
    config: the experiment config (after `config_lib.finalize`).
    name: one of `config_lib.STAGES`.

  Returns:
    The Stage.
  """
  return dataclasses.replace(_build(config, name), hyp_map=hyp_map_method(config))


def _build(config: ml_collections.ConfigDict, name: str) -> Stage:
  size = config.data.input_size
  msize = map_size(config)
  hyps = config_lib.hypothesis_list(config)
  crop_idx = crop_indices(config)
  widths = np.array([w for _, w in hyps], np.float32)
  unit = unit_crop_index(config)
  base = config.hypotheses.base

  if name == 'skeleton_net':
    cfg = config.skeleton_net
    model = skeleton_net.SkeletonMapNet(
        in_channels=3, decoder_width=cfg.model.decoder_width, out_channels=6,
        **_resnet_kwargs(cfg.model))

    def make_inputs(batch, aux, norm):
      del aux, norm
      return images_at(batch, crop_idx), render_maps(batch, crop_idx, widths, size, msize)

    def loss(logits, targets, batch):
      del batch
      return skeleton_net.skeleton_map_loss(logits, targets), {}

    def predict(logits, norm):
      del norm
      return jax.nn.sigmoid(logits[-1].astype(jnp.float32))

    return Stage(name, model, len(hyps), make_inputs, loss, predict,
                 np.zeros((1, size, size, 3), np.float32))

  if name in ('regressor', 'ensemble'):
    cfg = config[name]
    rsize = config.regressor.input_size
    model = regressor.PoseRegressor(in_channels=6, num_joints=skeleton.NUM_JOINTS,
                                    **_resnet_kwargs(cfg.model))
    predicted = config.regressor.input == 'predicted'
    if name == 'regressor':
      num, idx, wid, hyp_sel = len(hyps), crop_idx, widths, np.arange(len(hyps))
    else:
      num = int(cfg.num_runs)
      idx, wid, hyp_sel = crop_idx[base:base + 1], widths[base:base + 1], np.array([base])
    skel = build(config, 'skeleton_net') if predicted else None

    def make_inputs(batch, aux, norm):
      if predicted:
        sub = jax.tree_util.tree_map(lambda x: x[hyp_sel], aux)
        logits = hypotheses.apply_stacked(skel.model, sub, images_at(batch, idx),
                                          train=False, hyp_map=skel.hyp_map)
        maps = jax.lax.stop_gradient(jax.nn.sigmoid(logits[-1].astype(jnp.float32)))
      else:
        maps = render_maps(batch, idx, wid, size, msize)
      maps = resize_square(maps, rsize)
      if maps.shape[0] != num:
        maps = jnp.broadcast_to(maps, (num,) + maps.shape[1:])
      return maps, targets_for_hyp(_pose_targets(batch, norm), num)

    return Stage(name, model, num, make_inputs, _pose_loss, _pose_predict,
                 np.zeros((1, rsize, rsize, 6), np.float32),
                 needs='skeleton_net' if predicted else None, pose_norm=True)

  if name == 'direct_rgb':
    cfg = config.direct_rgb
    model = regressor.PoseRegressor(in_channels=3, num_joints=skeleton.NUM_JOINTS,
                                    **_resnet_kwargs(cfg.model))

    def make_inputs(batch, aux, norm):
      del aux
      return images_at(batch, np.array([unit])), targets_for_hyp(_pose_targets(batch, norm), 1)

    return Stage(name, model, 1, make_inputs, _pose_loss, _pose_predict,
                 np.zeros((1, size, size, 3), np.float32), pose_norm=True)

  if name == 'hourglass':
    cfg = config.hourglass
    hsize = cfg.input_size
    model = hourglass.StackedHourglass(
        num_stacks=cfg.model.num_stacks, num_features=cfg.model.num_features,
        num_joints=skeleton.NUM_JOINTS, depth=cfg.model.depth, dtype=_dtype(cfg.model.dtype))

    def make_inputs(batch, aux, norm):
      del aux, norm
      x = resize_square(images_at(batch, np.array([unit])), hsize)
      joints = batch['joints_2d'][:, unit] * (hsize / 4 / size)
      heat = hourglass.heatmap_targets(joints, batch['visible'], hsize // 4, cfg.sigma)
      return x, heat[None]

    def loss(heatmaps, targets, batch):
      return hourglass.heatmap_loss(heatmaps, targets, batch['visible']), {}

    def predict(heatmaps, norm):
      """Joints in data input pixels of the c=1 crop, and confidences."""
      del norm
      joints, conf = hourglass.decode_heatmaps(heatmaps[-1].astype(jnp.float32))
      return joints * (4 * size / hsize), conf

    return Stage(name, model, 1, make_inputs, loss, predict,
                 np.zeros((1, hsize, hsize, 3), np.float32))

  if name == 'lifting':
    cfg = config.lifting
    model = lifting.LiftingMLP(hidden=cfg.model.hidden, num_blocks=cfg.model.num_blocks,
                               dropout_rate=cfg.model.dropout_rate,
                               num_joints=skeleton.NUM_JOINTS)

    def make_inputs(batch, aux, norm):
      del aux
      x = lifting.normalize_2d(batch['joints_2d'][:, unit], batch['visible'])
      return x[None], targets_for_hyp(_pose_targets(batch, norm), 1)

    dummy = np.asarray(lifting.normalize_2d(np.zeros((1, 16, 2), np.float32) + np.arange(16)[None, :, None],
                                            np.ones((1, 16), bool)))
    return Stage(name, model, 1, make_inputs, _pose_loss, _pose_predict, dummy,
                 pose_norm=True)

  raise ValueError(f'unknown stage {name!r}: expected one of {config_lib.STAGES}')


def targets_for_hyp(targets: Any, num_hyps: int) -> Any:
  """Broadcasts targets without a hypothesis axis to [H, b, ...]."""
  def bcast(x):
    return jnp.broadcast_to(x, (num_hyps,) + x.shape)
  return jax.tree_util.tree_map(bcast, targets)
