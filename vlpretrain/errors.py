"""Errors that are the user's to fix: a bad binding, path, name or input.

The entry points (`gin_utils.run`) print such an error as one line on stderr, naming the
value and what to do, and exit with code 2; any other exception is a bug and keeps its
traceback. `--verbosity=1` (absl's flag) shows the traceback of a user error too.

    raise errors.ConfigError("MODEL_DIR is empty: pass --gin.MODEL_DIR=/path/to/run.")
    raise errors.MissingPathError(f"{path!r} (gin binding {binding}) is not a directory")

Both subclass the built-in exception a caller would catch (ValueError,
FileNotFoundError), so `except ValueError` keeps working.
"""


class UserError(Exception):
  """A mistake in the configuration or inputs of a run; its message says what to do."""


class ConfigError(UserError, ValueError):
  """A gin binding, macro, flag or name is missing, unknown or has a bad value."""


class MissingPathError(UserError, FileNotFoundError):
  """A file or directory that a binding names does not exist (or cannot be written)."""


def first_line(error: BaseException) -> str:
  """The error's message without what gin appends ("In call to configurable ...")."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__
