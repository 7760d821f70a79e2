"""Stop requests: SIGTERM (a preemption notice: TPU VMs, SLURM, Kubernetes send it
before killing) and SIGINT (Ctrl-C) become "checkpoint the current step and exit 0".

    with preemption.StopRequests() as stop:
      while step < total_steps:
        ...one step...
        if stop.requested():
          save; break

A second SIGINT while the first is being handled interrupts at once
(KeyboardInterrupt), for a user who does not want to wait for the save. In a
multi-process run every process must stop at the same step: `requested` then agrees
across processes (a signal on any host stops all), with one small all-gather per call.
Python's `signal` does this; nothing in jax or orbax offers it for a CPU/GPU trainer.
"""
import signal
import threading
from typing import Optional

from absl import logging
import jax
import numpy as np


class StopRequests:
  """Records SIGTERM / SIGINT while active; `requested()` names the first one."""

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._signals = tuple(signals)
    self._received: Optional[int] = None
    self._previous = {}

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():  # Else: no handlers.
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self._received is None:
      self._received = signum
      logging.warning("%s received: saving a checkpoint at the end of this step, then "
                      "stopping%s.", signal.Signals(signum).name,
                      " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")
      if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)

  def requested(self) -> Optional[str]:
    """The name of the signal that asked to stop ('SIGTERM'), or None; the same on
    every process of a multi-process run."""
    received = self._received
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      codes = np.asarray(multihost_utils.process_allgather(
          np.int32(received or 0))).reshape(-1)
      received = int(codes.max()) or None
    return signal.Signals(received).name if received else None
