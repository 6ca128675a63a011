"""Pseudo-3D labels for 2D-only data (MPII) from a trained lifting MLP.

The paper initialises MPII's 3D labels with a 2D->3D reconstruction ([59])
before a human corrects them; here the lifting stage (trained on Human3.6M or
mocap with configs/h36m_lifting.py) lifts every annotated MPII person. The
output is the `.npz` the mpii builder reads as `pseudo_3d_file`: one [16, 3]
root-relative pose in mm per key '<image name>#<person>' (the builder's
`image_name` and `frame` fields).

  python run.py --mode=pseudo3d --config=configs/mpii_regressor.py \
      --workdir=workdir/h36m --config.predict.output_dir=/data/mpii
  # then rebuild MPII with the labels:
  python run.py --mode=prepare --config=configs/mpii_regressor.py \
      --config.data.manual_dir=/data/mpii --config.data.builder_kwargs.pseudo_3d_file=pseudo_3d.npz
"""

from __future__ import annotations

import os

from absl import logging
import jax
import ml_collections
import numpy as np

from deepskeleton_jax import files
from deepskeleton_jax.experiment import checkpointing
from deepskeleton_jax.data import input_pipeline
from deepskeleton_jax.experiment import stages as stages_lib


def lift_split(config: ml_collections.ConfigDict, workdir: str, split: str) -> dict[str, np.ndarray]:
  """Lifts every person of a split; returns {'<image>#<frame>': [16, 3] mm}."""
  loaded = checkpointing.load_variables(workdir, 'lifting')
  stage = stages_lib.build(config, 'lifting')

  @jax.jit
  def lift(variables, norm, batch):
    return stage.infer(variables, batch, norm)[0]

  it = input_pipeline.make_iterator(config.data, split, 256, shuffle=False, num_epochs=1,
                                    seed=0, process_index=0, process_count=1)
  poses = {}
  for batch in it:
    numeric = {k: batch[k] for k in ('joints_2d', 'visible')}
    pred = np.asarray(lift(loaded['variables'], loaded['norm'], numeric))
    for i in np.flatnonzero(batch['mask']):
      poses[f"{batch['image_name'][i]}#{int(batch['frame'][i])}"] = pred[i]
  return poses


def write_pseudo_3d(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Lifts the train and eval splits and writes `<output_dir>/pseudo_3d.npz`.

  Args:
    config: a config whose `data` is the 2D dataset (e.g. mpii) and whose
      `lifting` group matches the trained lifting checkpoint in `workdir`.
    workdir: holds `lifting/checkpoints`.

  Returns:
    The written path.
  """
  poses = {}
  for split in (config.data.train_split, config.data.eval_split):
    poses.update(lift_split(config, workdir, split))
  out_dir = config.predict.output_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, 'pseudo_3d.npz')
  with files.atomic_path(path) as tmp:
    np.savez(tmp, **poses)
  logging.info('pseudo3d: %d poses -> %s', len(poses), path)
  return path
