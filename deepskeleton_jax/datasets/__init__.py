"""The repository's `datasets/` folder, importable as `deepskeleton_jax.datasets`.

Each `datasets/<name>/` folder (a TFDS builder `<name>.py` and the code only
that builder uses) is a subpackage here: `deepskeleton_jax.datasets.human36m.
fake_release` is `datasets/human36m/fake_release.py`. The folder itself is not
a Python package, because the name `datasets` belongs to a popular PyPI
package that a top-level folder of that name would shadow; this package's
`__path__` points at it instead. Set `DEEPSKELETON_DATASETS_DIR` to use builders
from another folder. Load builders through `deepskeleton_jax.data.registry`,
which also keeps TFDS's global registration out of the way.
"""

import os
import pathlib

DATASETS_DIR = pathlib.Path(os.environ.get(
    'DEEPSKELETON_DATASETS_DIR', pathlib.Path(__file__).resolve().parents[2] / 'datasets'))
__path__ = [str(DATASETS_DIR)]  # pylint: disable=invalid-name
