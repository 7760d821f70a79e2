"""One training run per MODEL_DIR: an advisory lock held for the run's lifetime.

Two runs writing one MODEL_DIR overwrite and garbage-collect each other's checkpoints.
The trainer takes an exclusive `fcntl.flock` on MODEL_DIR/train.lock before it writes
anything there; a second run is refused with a message naming the holder (pid, host,
start time). The kernel releases the lock when the holder exits, however it exits
(SIGKILL and crashes included), so a lock file left behind never blocks a restart.
Local and NFS-style paths only: on object stores (gs://, s3://) there is no such lock
and the trainer says so in its log.
"""
import datetime
import fcntl
import json
import os
import socket
from typing import IO, Optional

from absl import logging

from vlpretrain import errors

LOCK_NAME = "train.lock"
# Locks this process holds, by real path: a later run in the same process (after one
# that raised before releasing, say) takes its own lock over instead of being refused.
_HELD: dict[str, IO] = {}


def acquire(model_dir: str) -> Optional[IO]:
  """Locks MODEL_DIR (which must exist); returns the open lock file to keep, or None
  for a remote path. Raises ConfigError when another run holds it."""
  if "://" in model_dir:
    logging.info("MODEL_DIR %s is not a local path: a second run writing it is not "
                 "detected.", model_dir)
    return None
  path = os.path.realpath(os.path.join(model_dir, LOCK_NAME))
  if path in _HELD:
    return _HELD[path]
  try:
    lock = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  except OSError as e:
    raise errors.ConfigError(
        f"MODEL_DIR={model_dir!r} is not writable ({type(e).__name__}: {e}). Pass "
        "--gin.MODEL_DIR= a directory you can write.") from None
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.seek(0)
    holder = lock.read().strip() or "an unknown process"
    lock.close()
    raise errors.ConfigError(
        f"MODEL_DIR={model_dir!r} is in use by another training run ({holder}). Wait "
        "for it to finish or stop it (it saves on SIGTERM), or pass another "
        "--gin.MODEL_DIR.") from None
  lock.seek(0)
  lock.truncate()
  lock.write(json.dumps({
      "pid": os.getpid(), "host": socket.gethostname(),
      "started": datetime.datetime.now().isoformat(timespec="seconds")}))
  lock.flush()
  _HELD[path] = lock
  return lock


def release(lock: Optional[IO]) -> None:
  if lock is not None:
    _HELD.pop(os.path.realpath(lock.name), None)
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
