"""`secretenv.scrub` takes a variable out of the environment and out of the block /proc/PID/environ shows."""

from __future__ import annotations

import os
import subprocess
import sys

SCRUBBED = """
import os
from quantlab import secretenv
secretenv.scrub(["QLAB_TEST_SECRET", "QLAB_TEST_ABSENT"])
block = open("/proc/self/environ", "rb").read()
print("QLAB_TEST_SECRET" in os.environ, b"secret-value-1" in block, b"QLAB_TEST_KEPT=kept-value" in block)
"""


def test_a_scrubbed_variable_is_gone_from_the_environment_and_its_proc_copy_and_the_others_stay() -> None:
    env = {**os.environ, "QLAB_TEST_SECRET": "secret-value-1", "QLAB_TEST_KEPT": "kept-value"}
    done = subprocess.run([sys.executable, "-c", SCRUBBED], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["False", "False", "True"], done.stderr
