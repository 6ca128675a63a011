"""What each trainable stage sees, predicts and is scored on.

A stage couples a Flax model with the stacked-hypothesis layout (every stage's
variables carry a leading hypothesis axis H, H = 1 for single models), the way
its inputs are made from a data batch on the device (crops per hypothesis,
skeleton maps rendered by the rasterizer, or maps predicted by a frozen
SkeletonMapNet), its loss and its prediction. The trainer, the evaluator, the
predictor and the benchmark all go through these definitions, and through
`Layout`, the values every stage derives from the config.

Stages:
  skeleton_net: RGB crop at c_i -> fg/bg skeleton maps of stick width l_i.
  regressor:    skeleton maps (rendered from labels, or predicted) -> 3D pose.
  direct_rgb:   RGB crop at c=1 -> 3D pose (the paper's baseline).
  ensemble:     n regressors of the base hypothesis, each with its own
                initialisation and its own data order (`data_streams`).
  hourglass:    RGB crop at c=1 -> 2D heatmaps (for matching and PCKh).
  lifting:      2D joints -> 3D pose (pseudo-3D labels for MPII; a baseline).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepskeleton_jax.geometry import rasterize
from deepskeleton_jax.geometry import skeleton
from deepskeleton_jax.models import hourglass
from deepskeleton_jax.models import hypotheses
from deepskeleton_jax.models import lifting
from deepskeleton_jax.models import regressor
from deepskeleton_jax.models import skeleton_net
from deepskeleton_jax.experiment import config_lib

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ----------------------------------------------------------------------------
# Values derived from the config, shared by every stage and the evaluator.


@dataclasses.dataclass(frozen=True)
class Layout:
  """The config's hypotheses and sizes as every stage uses them.

  Attributes:
    input_size: side S of the model input crops.
    map_size: side of the skeleton maps (S / 4: 56 for 224).
    regressor_size: maps are resized to this side before regression.
    hourglass_size: side of the hourglass input.
    crop_idx: [H] per hypothesis, its crop's index in `data.crop_scales`.
    widths: [H] per hypothesis, its stick width in 224-px input pixels.
    unit: index of the c = 1.0 crop in `data.crop_scales`.
    base: the w/o Mul-Hyp hypothesis.
    hypotheses: the (crop scale, stick width) pairs.
  """
  input_size: int
  map_size: int
  regressor_size: int
  hourglass_size: int
  crop_idx: np.ndarray
  widths: np.ndarray
  unit: int
  base: int
  hypotheses: tuple[tuple[float, float], ...]

  @property
  def num_hyps(self) -> int:
    return len(self.hypotheses)


def layout(config: ml_collections.ConfigDict) -> Layout:
  """The `Layout` of a finalised config."""
  hyps = tuple(config_lib.hypothesis_list(config))
  scales = list(config.data.crop_scales)
  return Layout(
      input_size=int(config.data.input_size),
      map_size=int(config.data.input_size) // 4,
      regressor_size=int(config.regressor.input_size),
      hourglass_size=int(config.hourglass.input_size),
      crop_idx=np.array([scales.index(c) for c, _ in hyps], np.int32),
      widths=np.array([w for _, w in hyps], np.float32),
      unit=scales.index(1.0),
      base=int(config.hypotheses.base),
      hypotheses=hyps)


# ----------------------------------------------------------------------------
# On-device inputs.


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


def render_maps(batch: dict[str, jax.Array], lay: Layout,
                hyp_sel: np.ndarray | None = None) -> jax.Array:
  """Renders ground-truth fg/bg maps per hypothesis on the device.

  Args:
    batch: with `joints_2d` [b, C, 16, 2] (input pixels), `joints_3d`, `visible`.
    lay: the config's layout.
    hyp_sel: the hypotheses to render (default: all).

  Returns:
    [H, b, map_size, map_size, 6] float32 (fg RGB, bg RGB).
  """
  sel = np.arange(lay.num_hyps) if hyp_sel is None else np.asarray(hyp_sel)
  size = lay.map_size
  joints = jnp.moveaxis(batch['joints_2d'][:, lay.crop_idx[sel]], 1, 0)
  joints = joints * (size / lay.input_size)
  depth = jnp.broadcast_to(batch['joints_3d'][..., 2], (len(sel),) + batch['visible'].shape)
  visible = jnp.broadcast_to(batch['visible'], depth.shape)
  widths = rasterize.stick_width_in_map(jnp.asarray(lay.widths[sel])[:, None], size)
  return rasterize.render_targets(joints, depth, visible, widths, size)


def targets_for_hyp(targets: Any, num_hyps: int) -> Any:
  """Broadcasts targets without a hypothesis axis to [H, b, ...]."""
  return jax.tree_util.tree_map(
      lambda x: jnp.broadcast_to(x, (num_hyps,) + x.shape), targets)


def _pose_targets(batch, norm):
  target = (root_relative(batch['joints_3d']) - norm['mean']) / norm['std']
  return {'pose': target, 'weight': batch['has_3d'].astype(jnp.float32)}


def pose_loss_fn(kind: str) -> Callable[..., Any]:
  """The pose stages' loss: (pred, targets, batch) -> (scalar, metrics).

  Args:
    kind: the stage's `loss` key: 'euclidean' (Caffe's EuclideanLoss, the
      paper's: sum of squares / 2N, `regressor.euclidean_loss`) or 'distance'
      (the mean per-joint Euclidean distance, `regressor.pose_loss`), both on
      the normalised targets.

  Returns:
    The loss function of one hypothesis.
  """
  fn = {'euclidean': regressor.euclidean_loss, 'distance': regressor.pose_loss}[kind]

  def loss(pred, targets, batch):
    del batch
    return fn(pred, targets['pose'], targets['weight']), {}
  return loss


def tile_streams(batch: dict[str, Any], streams: int) -> dict[str, Any]:
  """A plain batch as a stage with `data_streams` takes it: every stream sees the same rows.

  Args:
    batch: numeric fields [b, ...].
    streams: the stage's `data_streams` (0: plain batches, returned as they are).

  Returns:
    The fields repeated along a new axis 1, [b, streams, ...] (for the
    validation loss, benchmarks and shape checks).
  """
  if not streams:
    return batch
  return {k: np.repeat(np.asarray(v)[:, None], streams, axis=1) for k, v in batch.items()}


def _pose_predict(pred, norm):
  return pred.astype(jnp.float32) * norm['std'] + norm['mean']


# ----------------------------------------------------------------------------
# The stage.


@dataclasses.dataclass(frozen=True)
class Stage:
  """A trainable stage.

  Attributes:
    name: the stage name (a config group).
    model: the Flax module of one hypothesis.
    num_hyps: H, the size of the leading axis of the stacked variables.
    make_inputs: (batch, aux_variables, norm, step=None) -> (inputs [H, b, ...],
      targets pytree with leading [H, b]); runs inside jit. `aux_variables` are
      the stacked variables of the stage named by `needs`; `norm` the pose
      normalisation {'mean': [16, 3], 'std': []}; `step` the train step (a
      traced scalar; None outside training).
    loss: (model outputs of one hypothesis, targets of that hypothesis, batch)
      -> (scalar loss, metrics dict); runs mapped over hypotheses.
    predict: (stacked model outputs, norm) -> the stage's prediction with a
      leading [H] axis (poses in mm, maps in [0, 1], 2D joints in input
      pixels of the c = 1 crop with confidences).
    prepare: what the model sees, from the stage's source: a batch for the
      image and 2D stages, maps [h, b, s, s, 6] for the regressors; returns
      [H, b, ...] (or [1, b, ...], shared by all hypotheses).
    dummy_input: a one-example input of one hypothesis, for init.
    needs: the stage whose trained variables `make_inputs` uses, or None.
    pose_norm: whether the targets are poses normalised by dataset statistics.
    hyp_map: 'vmap' or 'loop' (see `hypotheses.map_hypotheses`).
    data_streams: 0 for train batches of fields [b, ...] shared by every
      hypothesis; n (the ensemble) for fields [b, n, ...], column m from
      member m's own shuffled stream (`tile_streams` makes one from a plain
      batch).
  """
  name: str
  model: nn.Module
  num_hyps: int
  make_inputs: Callable[..., Any]
  loss: Callable[..., Any]
  predict: Callable[..., Any]
  prepare: Callable[..., Any]
  dummy_input: np.ndarray
  needs: str | None = None
  pose_norm: bool = False
  hyp_map: str = 'vmap'
  data_streams: int = 0

  def apply(self, variables: Any, inputs: jax.Array) -> Any:
    """Eval-mode outputs of every hypothesis for inputs [H or 1, b, ...]."""
    if inputs.shape[0] != self.num_hyps:
      inputs = jnp.broadcast_to(inputs, (self.num_hyps,) + inputs.shape[1:])
    return hypotheses.apply_stacked(self.model, variables, inputs, train=False,
                                    hyp_map=self.hyp_map)

  def infer(self, variables: Any, source: Any, norm: Any = None) -> Any:
    """`predict(apply(prepare(source)))`: the stage's prediction, [H, ...]."""
    return self.predict(self.apply(variables, self.prepare(source)), norm)


def hyp_map_method(config: ml_collections.ConfigDict) -> str:
  """'vmap' or 'loop' from `config.parallel.hyp_map` ('auto': loop on CPU)."""
  method = config.parallel.hyp_map
  if method == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'vmap'
  return method


def _dtype(name: str):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def _resnet_kwargs(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(stage_sizes=tuple(model_cfg.stage_sizes), width=model_cfg.width,
              dtype=_dtype(model_cfg.dtype), remat=model_cfg.remat)


# ----------------------------------------------------------------------------
# One builder per stage.


def _skeleton_net(config, lay: Layout) -> Stage:
  cfg = config.skeleton_net
  model = skeleton_net.SkeletonMapNet(
      in_channels=3, decoder_width=cfg.model.decoder_width, out_channels=6,
      **_resnet_kwargs(cfg.model))

  def prepare(batch):
    return images_at(batch, lay.crop_idx)

  def make_inputs(batch, aux, norm, step=None):
    del aux, norm, step
    return prepare(batch), render_maps(batch, lay)

  def loss(logits, targets, batch):
    del batch
    return skeleton_net.skeleton_map_loss(logits, targets, normalization=cfg.loss), {}

  def predict(logits, norm):
    del norm
    return jax.nn.sigmoid(logits[-1].astype(jnp.float32))

  return Stage('skeleton_net', model, lay.num_hyps, make_inputs, loss, predict, prepare,
               np.zeros((1, lay.input_size, lay.input_size, 3), np.float32))


def predicted_maps(skel: Stage, variables: Any, batch: dict[str, jax.Array],
                   lay: Layout, hyp_sel: np.ndarray) -> jax.Array:
  """The SkeletonMapNet's maps of the selected hypotheses, [len(sel), b, s, s, 6]."""
  sub = jax.tree_util.tree_map(lambda x: x[hyp_sel], variables)
  sub_stage = dataclasses.replace(skel, num_hyps=len(hyp_sel))
  x = images_at(batch, lay.crop_idx[hyp_sel])
  return jax.lax.stop_gradient(sub_stage.predict(sub_stage.apply(sub, x), None))


def _regressor(config, lay: Layout, name: str) -> Stage:
  cfg = config[name]
  model = regressor.PoseRegressor(in_channels=6, num_joints=skeleton.NUM_JOINTS,
                                  **_resnet_kwargs(cfg.model))
  predicted = config.regressor.input == 'predicted'
  if name == 'regressor':
    num, hyp_sel = lay.num_hyps, np.arange(lay.num_hyps)
  else:  # ensemble: n regressors of the base hypothesis
    num, hyp_sel = int(cfg.num_runs), np.array([lay.base])
  skel = build(config, 'skeleton_net') if predicted else None

  def prepare(maps):
    return resize_square(maps, lay.regressor_size)

  gt_fraction = float(config.regressor.gt_fraction) if predicted else 1.0
  gt_steps = int(config.regressor.gt_steps) if predicted else 0

  def mixed_maps(batch, aux):
    # The first round(gt_fraction * b) examples of the (shuffled) batch get
    # maps rendered from their labels, the rest the SkeletonMapNet's maps.
    b = batch['joints_3d'].shape[0]
    k = int(round(gt_fraction * b))
    head = jax.tree_util.tree_map(lambda x: x[:k], batch)
    tail = jax.tree_util.tree_map(lambda x: x[k:], batch)
    parts = ([render_maps(head, lay, hyp_sel)] if k else []) + (
        [predicted_maps(skel, aux, tail, lay, hyp_sel)] if k < b else [])
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

  def maps_and_targets(batch, aux, norm, step):
    if gt_steps and step is not None:
      # The first gt_steps train steps see rendered maps only (one compiled
      # step: the SkeletonMapNet runs only in the later branch).
      maps = jax.lax.cond(step < gt_steps, lambda: render_maps(batch, lay, hyp_sel),
                          lambda: mixed_maps(batch, aux))
    else:
      maps = mixed_maps(batch, aux)
    return prepare(maps), _pose_targets(batch, norm)

  def make_inputs(batch, aux, norm, step=None):
    if name == 'ensemble':  # fields [b, num, ...]: member m's examples in column m
      b = batch['joints_3d'].shape[0]
      flat = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
      x, targets = maps_and_targets(flat, aux, norm, step)
      per_member = lambda t: jnp.swapaxes(t.reshape((b, num) + t.shape[1:]), 0, 1)
      return per_member(x[0]), jax.tree_util.tree_map(per_member, targets)
    x, targets = maps_and_targets(batch, aux, norm, step)
    return x, targets_for_hyp(targets, num)

  size = lay.regressor_size
  return Stage(name, model, num, make_inputs, pose_loss_fn(cfg.loss), _pose_predict, prepare,
               np.zeros((1, size, size, 6), np.float32),
               needs='skeleton_net' if predicted else None, pose_norm=True,
               data_streams=num if name == 'ensemble' else 0)


def _direct_rgb(config, lay: Layout) -> Stage:
  model = regressor.PoseRegressor(in_channels=3, num_joints=skeleton.NUM_JOINTS,
                                  **_resnet_kwargs(config.direct_rgb.model))

  def prepare(batch):
    return images_at(batch, np.array([lay.unit]))

  def make_inputs(batch, aux, norm, step=None):
    del aux, step
    return prepare(batch), targets_for_hyp(_pose_targets(batch, norm), 1)

  return Stage('direct_rgb', model, 1, make_inputs, pose_loss_fn(config.direct_rgb.loss),
               _pose_predict, prepare,
               np.zeros((1, lay.input_size, lay.input_size, 3), np.float32),
               pose_norm=True)


def _hourglass(config, lay: Layout) -> Stage:
  cfg = config.hourglass
  hsize = lay.hourglass_size
  model = hourglass.StackedHourglass(
      num_stacks=cfg.model.num_stacks, num_features=cfg.model.num_features,
      num_joints=skeleton.NUM_JOINTS, depth=cfg.model.depth, dtype=_dtype(cfg.model.dtype))

  def prepare(batch):
    return resize_square(images_at(batch, np.array([lay.unit])), hsize)

  if cfg.loss == 'integral':  # targets: the joints themselves (heatmap pixels)
    targets_of = lambda joints, visible: joints
    map_loss, decode = hourglass.integral_loss, hourglass.soft_argmax
  else:
    targets_of = functools.partial(hourglass.heatmap_targets, size=hsize // 4, sigma=cfg.sigma)
    map_loss, decode = hourglass.heatmap_loss, hourglass.decode_heatmaps

  def make_inputs(batch, aux, norm, step=None):
    del aux, norm, step
    joints = batch['joints_2d'][:, lay.unit] * (hsize / 4 / lay.input_size)
    return prepare(batch), targets_of(joints, batch['visible'])[None]

  def loss(heatmaps, targets, batch):
    return map_loss(heatmaps, targets, batch['visible']), {}

  def predict(heatmaps, norm):
    """Joints [H, b, 16, 2] in input pixels of the c=1 crop, confidences [H, b, 16]."""
    del norm
    heat = heatmaps[-1].astype(jnp.float32)
    joints, conf = decode(heat.reshape((-1,) + heat.shape[2:]))
    lead = heat.shape[:2]
    return (joints.reshape(lead + joints.shape[1:]) * (4 * lay.input_size / hsize),
            conf.reshape(lead + conf.shape[1:]))

  return Stage('hourglass', model, 1, make_inputs, loss, predict, prepare,
               np.zeros((1, hsize, hsize, 3), np.float32))


def _lifting(config, lay: Layout) -> Stage:
  cfg = config.lifting
  model = lifting.LiftingMLP(hidden=cfg.model.hidden, num_blocks=cfg.model.num_blocks,
                             dropout_rate=cfg.model.dropout_rate,
                             num_joints=skeleton.NUM_JOINTS)

  def prepare(batch):
    return lifting.normalize_2d(batch['joints_2d'][:, lay.unit], batch['visible'])[None]

  def make_inputs(batch, aux, norm, step=None):
    del aux, step
    return prepare(batch), targets_for_hyp(_pose_targets(batch, norm), 1)

  spread = np.zeros((1, 16, 2), np.float32) + np.arange(16)[None, :, None]
  dummy = np.asarray(lifting.normalize_2d(spread, np.ones((1, 16), bool)))
  return Stage('lifting', model, 1, make_inputs, pose_loss_fn(cfg.loss), _pose_predict, prepare,
               dummy, pose_norm=True)


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, Layout], Stage]] = {
    'skeleton_net': _skeleton_net,
    'regressor': lambda config, lay: _regressor(config, lay, 'regressor'),
    'ensemble': lambda config, lay: _regressor(config, lay, 'ensemble'),
    'direct_rgb': _direct_rgb,
    'hourglass': _hourglass,
    'lifting': _lifting,
}
assert set(_BUILDERS) == set(config_lib.STAGES)


def build(config: ml_collections.ConfigDict, name: str) -> Stage:
  """Builds the named stage from a finalised config.

  Args:
    config: the experiment config (after `config_lib.finalize`).
    name: one of `config_lib.STAGES`.

  Returns:
    The Stage.
  """
  if name not in _BUILDERS:
    raise ValueError(f'unknown stage {name!r}: expected one of {config_lib.STAGES}')
  stage = _BUILDERS[name](config, layout(config))
  return dataclasses.replace(stage, hyp_map=hyp_map_method(config))
