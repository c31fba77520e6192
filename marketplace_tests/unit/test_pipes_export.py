"""The export job's entry point (`marketplace-export`) run for real through PipesSubprocessClient.

`export.engine: subprocess` runs the same export code in a process of its own and reads each
version's outcome back over Dagster Pipes; these tests hold it to the in-process export's results.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_entry_point_refuses_to_run_outside_pipes():
    # The console script a Databricks python_wheel_task runs (entry point marketplace-export).
    script = Path(sys.executable).parent / "marketplace-export"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "not started by Dagster Pipes" in done.stderr
