"""Runs an ONNX-exported DeepSkeleton-JAX model with nothing but onnxruntime and numpy.

  python examples/serve_onnx.py EXPORT_DIR CROPS.npy OUT.npz

EXPORT_DIR holds `model.onnx` and `model.json` from
`python run.py --mode=export --config.export.format=onnx` (and, for models
over 1 GiB, the weights in `model.onnx.data`, which ONNX Runtime finds beside
the model); CROPS.npy is a
uint8 array [b, C, S, S, 3] of RGB person crops, one per crop scale of
`model.json`'s `preprocessing` (`crop` in examples/serve_exported.py makes
them from an image and a person box with numpy alone). OUT.npz gets every
output under its `model.json` name. The graph holds the whole pipeline,
matching and refinement included (`pose` is `hyps[chosen]`, refined when
`model.json`'s `matching` says so). This file imports neither jax,
flax nor deepskeleton_jax: copy it next to the model and serve from there.
"""

import json
import os
import sys

import numpy as np
import onnxruntime


def load(export_dir, threads=0):
  """Returns (fn: crops -> {name: array}, spec: model.json as a dict).

  Args:
    export_dir: the folder with model.onnx and model.json.
    threads: ONNX Runtime's intra-op threads (0: its default, one per core).

  Returns:
    The function (uint8 crops [b, C, S, S, 3] -> {output name: array}) and
    model.json.
  """
  with open(os.path.join(export_dir, 'model.json')) as f:
    spec = json.load(f)
  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads = threads
  session = onnxruntime.InferenceSession(os.path.join(export_dir, 'model.onnx'), options,
                                         providers=['CPUExecutionProvider'])
  names = [o['name'] for o in spec['outputs']]

  def fn(crops):
    outputs = session.run(names, {'crops': np.asarray(crops, np.uint8)})
    return dict(zip(names, outputs))

  return fn, spec


def main(argv):
  if len(argv) != 4:
    sys.exit(__doc__)
  fn, _ = load(argv[1])
  outputs = fn(np.load(argv[2]))
  np.savez(argv[3], **outputs)
  print({k: v.shape for k, v in outputs.items()})


if __name__ == '__main__':
  main(sys.argv)
