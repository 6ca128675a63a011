"""Errors that are the user's to fix, which run.py prints as one line.

`run.py` prints a `UserError` as `error: <message>` on stderr, without a
traceback, and exits with status 2; anything else is an internal error and
keeps its traceback. Messages say what was wrong, where (the flag, config key
or file) and what was expected. Each class also derives from the built-in
exception it refines, so `except ValueError` or `except FileNotFoundError`
still catches it.
"""


class UserError(Exception):
  """Bad input from the user: a flag, a config value, a file, a missing build."""


class ConfigError(UserError, ValueError):
  """A config value or flag is invalid (the message names the key)."""


class InputError(UserError, ValueError):
  """An input file (dataset release, image, video, detections) is missing or malformed."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """A stage that the command needs has no checkpoint in the workdir."""
