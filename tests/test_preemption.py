"""SIGTERM / SIGINT: a checkpoint at the current step and exit 0; the same command
resumes from it."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vlpretrain import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stop_requests_record_the_first_signal_and_restore_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.StopRequests() as stop:
    assert stop.requested() is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested() == "SIGTERM"
    os.kill(os.getpid(), signal.SIGTERM)  # A second SIGTERM changes nothing.
    assert stop.requested() == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_interrupts_at_once():
  with preemption.StopRequests() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested() == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # The handler runs between bytecodes: here.


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_the_current_step_and_the_command_resumes(tmp_path, sig):
  model_dir = str(tmp_path / "run")
  command = [os.path.join(os.path.dirname(sys.executable), "vlpretrain"), "train",
             "--gin_file=gin/jar_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'",
             "--gin.train_script.train.log_period=10"]
  proc = subprocess.Popen(command + ["--gin.TRAIN_STEPS=5000"], cwd=REPO, text=True,
                          stderr=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if re.search(r"step 20/5000 \|", line):
      break
  sent = time.time()
  proc.send_signal(sig)
  _, rest = proc.communicate(timeout=300)
  seconds = time.time() - sent
  log = "".join(lines) + rest
  assert proc.returncode == 0, log[-3000:]
  stopped = re.search(r"Stopped by (SIG\w+): steps 0-(\d+) of 5000", log)
  assert stopped and stopped.group(1) == signal.Signals(sig).name, log[-3000:]
  step = int(stopped.group(2))
  assert step >= 20 and f"Saved checkpoint for step {step}." in log
  assert os.path.isdir(os.path.join(model_dir, "checkpoints", str(step)))
  print(f"{signal.Signals(sig).name}: checkpoint of step {step}, exit {seconds:.1f} s "
        "after the signal")
  assert seconds < 60, f"took {seconds:.1f} s from the signal to the exit"
  again = subprocess.run(command + [f"--gin.TRAIN_STEPS={step + 2}"], cwd=REPO,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resuming from checkpoint at step {step}" in again.stderr
  assert f"Done: steps {step}-{step + 2} of {step + 2}" in again.stderr
