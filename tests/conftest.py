"""Test-wide settings. OpenMP threads that spin while waiting make small torch ops 10–20× slower when the
machine is shared (CI runners, parallel jobs); passive waiting changes no result."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
