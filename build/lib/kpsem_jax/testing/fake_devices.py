"""Runs a Python script in a fresh process that sees ``devices`` XLA:CPU devices."""

import json
import os
import subprocess
import sys


def environment(devices: int) -> dict:
  """This environment with ``devices`` fake CPU devices (``XLA_FLAGS``), CPU only."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu")


def run_script(script: str, devices: int, timeout: int = 600):
  """Runs ``script`` (``python -c``) on ``devices`` fake CPU devices; returns the JSON value
  its last stdout line prints. Fails (AssertionError, with the end of its stderr) when the
  script exits non-zero."""
  done = subprocess.run([sys.executable, "-c", script], env=environment(devices),
                        capture_output=True, text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])
