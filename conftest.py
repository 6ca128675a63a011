"""pytest setup shared by tests/ and datasets/*/ tests.

Eight fake CPU devices (for sharding tests) and a persistent JAX compilation
cache keep the suite fast and make multi-device code testable on a laptop.
Must run before JAX is imported, hence environment variables.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(os.path.expanduser('~'), '.cache', 'deepskeleton_jax', 'jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pathlib  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data, or skip the test when it is absent (a user's clone)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} is absent')
  return SHARED_DATA
