"""Gin flags like t5x: --gin_file, --gin_bindings, --gin_search_paths and --gin.NAME=VALUE.

    vlpretrain train --gin_file=gin/jar_tiny.gin --gin.MODEL_DIR=/tmp/run \
        --gin.TRAIN_STEPS=100 --gin_bindings="utils.SaveCheckpointConfig.period = 50"
"""
import ast
import difflib
import importlib.util
import logging as pylogging
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import gin
import gin.resource_reader

import vlpretrain
from vlpretrain import errors

# The repository's gin/ directory: always searched, so `include 'runs/pretrain.gin'` and
# `--gin_file=jar_tiny.gin` resolve from anywhere.
REPO_GIN_DIR = os.path.normpath(
    os.path.join(os.path.dirname(vlpretrain.__file__), "..", "gin"))

_GIN_FILE = flags.DEFINE_multi_string(
    "gin_file", default=[], help="Gin config file(s); later files override earlier ones.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", default=[],
    help="Individual gin bindings, applied after the files, e.g. 'TRAIN_STEPS = 10'. "
    "`--gin.NAME=VALUE` is shorthand for `--gin_bindings='NAME = VALUE'`.")
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths", default=["."],
    help="Directories searched for gin files and includes; the repo's gin/ directory is "
    "always searched last.")
_MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", False,
    "Multi-host run: call jax.distributed.initialize() before anything touches the "
    "devices (same as VLPRETRAIN_MULTIPROCESS=1).")


def multiprocess_requested() -> bool:
  """True if --multiprocess was passed (flags parsed) or VLPRETRAIN_MULTIPROCESS=1."""
  flag = _MULTIPROCESS.value if flags.FLAGS.is_parsed() else False
  return flag or os.environ.get("VLPRETRAIN_MULTIPROCESS", "0").lower() in ("1", "true")


def _as_gin_value(value: str) -> str:
  """Leaves gin syntax alone; quotes a bare word/path so `--gin.MODEL_DIR=/tmp/x` works."""
  stripped = value.strip()
  if (stripped[:1] in tuple("@%[{('\"") or "@" in stripped or "%" in stripped or
      stripped in ("True", "False", "None")):
    return value  # gin syntax (references, macros, containers, quoted strings).
  try:
    ast.literal_eval(stripped)
    return value
  except (ValueError, SyntaxError):
    return repr(stripped)


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Rewrites `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE` (t5x's helper).

  VALUE is gin syntax (`10`, `'shapes_cap'`, `@foo()`, `%BAR`, `{'inputs': 32}`); a value
  that is not (a bare path or word) is taken as a string.
  """
  def rewrite(arg):
    if not arg.startswith("--gin."):
      return arg
    if "=" not in arg:
      raise ValueError(f"Gin flag {arg!r} has no value; write --gin.NAME=VALUE.")
    name, value = arg[len("--gin."):].split("=", 1)
    return f"--gin_bindings={name} = {_as_gin_value(value)}"

  return [rewrite(arg) for arg in args]


# Module aliases that gin files import (`from vlpretrain import train as train_script`).
# Command-line bindings are parsed without those imports, so `train_script.train.X = 1`
# is rewritten to `vlpretrain.train.train.X = 1` (likewise eval_script, infer_script,
# export_script); the other modules (`utils.`,
# `partitioning.`, ...) already match by their own names.
_BINDING_ALIASES = {"train_script": "vlpretrain.train", "eval_script": "vlpretrain.eval",
                    "infer_script": "vlpretrain.infer",
                    "export_script": "vlpretrain.export"}
_ALIAS_RE = re.compile(r"^(\s*(?:[\w.]+/)*)(%s)\." % "|".join(_BINDING_ALIASES))


def _resolve_aliases(binding: str) -> str:
  return _ALIAS_RE.sub(lambda m: m.group(1) + _BINDING_ALIASES[m.group(2)] + ".",
                       binding)


def _hide_path_not_found(record: pylogging.LogRecord) -> bool:
  return not str(record.msg).startswith(("Path not found", "system_path_file_exists"))


# -----------------------------------------------------------------------------
# Where gin files are found. gin tries each search path (first '', the working
# directory) with two readers: a plain file, then a "system path" reader that takes the
# include's directory as a Python package (`include 'runs/pretrain.gin'` -> package
# `runs`). gin 0.5.0's reader raises TypeError when that name is a namespace package, i.e.
# any folder without __init__.py on sys.path: a `runs/` folder in the working directory
# (the default MODEL_DIR of the tiny configs) broke every later include of
# 'runs/*.gin'. vlpretrain replaces that reader's existence check with one that answers
# False for a name that is not a regular package, so the search goes on to the next
# path (the repository's gin/ directory is always searched). Nothing a run writes can
# then change how the project's own gin files resolve. gin keeps its readers in a
# private list and has no call to replace one, hence the list edit.
# -----------------------------------------------------------------------------
def _package_file_exists(config_path: str) -> bool:
  """gin's system-path check, False for namespace packages (folders, not packages)."""
  head, filename = os.path.split(config_path)
  try:
    spec = importlib.util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError):
    return False
  if spec is None or not spec.origin or not spec.has_location:
    return False  # Not a package, or a namespace package: nothing gin could open.
  return os.path.isfile(os.path.join(os.path.dirname(spec.origin), filename))


def _use_safe_package_reader() -> None:
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  for i, (reader, exists) in enumerate(readers):
    if exists is gin.resource_reader.system_path_file_exists:
      readers[i] = (reader, _package_file_exists)


_use_safe_package_reader()


# -----------------------------------------------------------------------------
# Macro bindings must name a macro that a parsed gin file defines.
# -----------------------------------------------------------------------------
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_MACRO_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*) = ", re.MULTILINE)


def _defined_macros() -> list[str]:
  """The macros bound so far (gin has no call listing them; its config_str does)."""
  return sorted(set(_MACRO_LINE.findall(gin.config_str())))


def check_macro_bindings(bindings: Sequence[str]) -> None:
  """Raises ConfigError for a `NAME = value` binding whose macro no gin file defines.

  gin would silently define a new macro that nothing reads (`--gin.TRAIN_STEPSS=10`
  trains for the default TRAIN_STEPS), so every macro binding must override one.
  """
  for binding in bindings:
    match = _MACRO_BINDING.match(binding)
    if not match:
      continue
    name = match.group(1)
    try:
      gin.query_parameter(f"{name}/gin.macro.value")
    except ValueError:
      close = difflib.get_close_matches(name, _defined_macros(), n=1)
      hint = (f"did you mean {close[0]}?" if close else
              "define it in a gin file first.")
      raise errors.ConfigError(
          f"Gin macro {name} (binding {binding.strip()!r}) is not defined by any of the "
          f"gin files: {hint}") from None


def _one_line(error: BaseException) -> str:
  """gin's message with the location it appends ("In file ... line N") on one line."""
  return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def parse_gin_flags(gin_search_paths: Sequence[str],
                    gin_files: Sequence[str],
                    gin_bindings: Sequence[str],
                    finalize_config: bool = True,
                    require_gin_file: bool = True) -> None:
  """Adds search paths, parses files then bindings, and (by default) finalizes gin.

  Tools that run without a model (tools/show_task.py, tools/bench_input.py) pass
  require_gin_file=False: bindings alone are enough for them.
  """
  paths = list(gin_search_paths)
  if os.path.isdir(REPO_GIN_DIR) and REPO_GIN_DIR not in paths:
    paths.append(REPO_GIN_DIR)
  for path in paths:
    gin.add_config_file_search_path(path)
  if not gin_files and require_gin_file:
    raise app.UsageError("No --gin_file given, e.g. --gin_file=gin/jar_tiny.gin.")
  # gin logs every search path it tries, and an ERROR for each one a file is *not*
  # in; hide those (a file found nowhere still raises).
  gin_logger = pylogging.getLogger()
  gin_logger.addFilter(_hide_path_not_found)
  bindings = [_resolve_aliases(b) for b in gin_bindings]
  try:
    for gin_file in gin_files:
      gin.parse_config_file(gin_file)
    check_macro_bindings(bindings)
    gin.parse_config(bindings)
    if finalize_config:
      gin.finalize()
  except errors.UserError:
    raise
  except IOError as e:  # gin's "Unable to open file: ...".
    raise errors.MissingPathError(
        f"{errors.first_line(e)} Give a path relative to the working directory, one of "
        "--gin_search_paths, or the repository's gin/ directory.") from e
  except (ValueError, ImportError) as e:  # Unknown configurable, parameter or module.
    raise errors.ConfigError(f"Gin: {_one_line(e)}") from e
  finally:
    gin_logger.removeFilter(_hide_path_not_found)
  logging.info("Gin files: %s; bindings: %s", list(gin_files), list(gin_bindings))


def parse_gin_flags_from_command_line(finalize_config: bool = True) -> None:
  """`parse_gin_flags` with the values of the absl flags defined above."""
  parse_gin_flags(_GIN_SEARCH_PATHS.value, _GIN_FILE.value, _GIN_BINDINGS.value,
                  finalize_config=finalize_config)


def write_config(model_dir: str, filename: str = "config.gin") -> Optional[str]:
  """Writes the full gin config into MODEL_DIR (process 0 only); returns the path."""
  import jax  # Deferred: importing jax is slow and not needed for flag parsing.
  if jax.process_index() != 0:
    return None
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, filename)
  with open(path, "w") as f:
    f.write(gin.config_str())
  return path


def gin_main(entry: Callable[[], Any], multiprocess: bool = True
             ) -> Callable[[Sequence[str]], None]:
  """The absl main of an entry point: parse the gin flags, then `entry()`, whose
  arguments all come from gin. With `multiprocess`, --multiprocess (or
  VLPRETRAIN_MULTIPROCESS=1) first joins the other hosts."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
    if multiprocess and multiprocess_requested():
      from vlpretrain import partitioning  # pylint: disable=g-import-not-at-top
      partitioning.initialize_distributed()
    parse_gin_flags_from_command_line()
    entry()

  return main


# -----------------------------------------------------------------------------
# Console output: our INFO lines, everyone's warnings, user errors as one line.
# -----------------------------------------------------------------------------
_OWN_CODE = (os.path.dirname(vlpretrain.__file__),
             os.path.normpath(os.path.join(os.path.dirname(vlpretrain.__file__), "..",
                                           "tools")))


def verbose() -> bool:
  """absl's --verbosity (-v) >= 1: show the libraries' INFO lines and tracebacks."""
  return flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1


# Libraries whose warnings are routine: orbax warns on every read-only restore ("Given
# directory is read only", "Metadata file does not exist").
_ROUTINE_WARNINGS = (os.sep + "orbax" + os.sep,)


class _OwnInfoOnly(pylogging.Filter):
  """Keeps INFO lines of vlpretrain's code and tools, and every warning and error
  except orbax's routine ones.

  Hidden: the libraries' INFO lines a CPU user sees on every command (jax probing for
  a TPU, orbax's dozens of lines per save and restore, TensorFlow's "Sharding callback
  duration"). `--verbosity=1` shows them.
  """

  def filter(self, record: pylogging.LogRecord) -> bool:
    if verbose() or record.levelno > pylogging.WARNING:
      return True
    path = os.path.normpath(record.pathname or "")
    if record.levelno == pylogging.WARNING:
      return not any(part in path for part in _ROUTINE_WARNINGS)
    return path.startswith(_OWN_CODE) or record.name == "__main__"


def quiet_library_logs() -> None:
  """Installs `_OwnInfoOnly` on absl's handler (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())


def run(main: Callable[[Sequence[str]], None], argv: Optional[Sequence[str]] = None):
  """`absl.app.run(main)` that understands `--gin.NAME=VALUE`.

  A `vlpretrain.errors.UserError` (a bad binding, path or name) is printed as one line
  on stderr, "<program>: error: <message>", and the process exits with code 2; with
  --verbosity=1 it keeps its traceback.
  """
  argv = list(sys.argv if argv is None else argv)
  # `--help` lists the flags of the module named sys.argv[0]: make that ours.
  sys.argv[:1] = argv[:1]
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(argv[0], flag)

  def main_reporting_user_errors(args):
    quiet_library_logs()
    try:
      main(args)
    except errors.UserError as e:
      if verbose():
        raise
      logging.flush()
      print(f"{argv[0]}: error: {errors.first_line(e)}", file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(main_reporting_user_errors, argv=rewrite_gin_args(argv))
