"""The TFDS builders, importable as `deepskeleton_jax.datasets.<name>.<module>`.

Each `datasets/<name>/` folder (a TFDS builder `<name>.py` and the code only
that builder uses) is a subpackage here: `deepskeleton_jax.datasets.human36m.
fake_release` is `datasets/human36m/fake_release.py`. In a checkout the folders
live in the repository's top-level `datasets/` (not itself a Python package:
the name `datasets` belongs to a popular PyPI package that it would shadow) and
this package's `__path__` points there; an installed wheel holds them in this
package's own folder (pyproject's package-dir mapping), where this file is not
installed. Load builders through `deepskeleton_jax.data.registry`, which also
keeps TFDS's global registration out of the way (and honours
`DEEPSKELETON_DATASETS_DIR`).
"""

import pathlib

__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / 'datasets')]  # pylint: disable=invalid-name
