"""What a warm run worker would give (`make bench`, item 1): partitions of marketplace_sync_job run
in processes forked from one that has already imported the code location, MLflow, scikit-learn
and skops, as a fork-server run launcher would start them.

Dagster's run launcher starts each run in a new interpreter, which imports all of that again
(about 3.4 s of CPU); this measures what that costs a sync. It is a measurement, not how the
marketplace runs.

    MARKETPLACE_CONFIG=... DAGSTER_HOME=... python -m benchmarks.warm_worker PARTITION...

prints one JSON line: the seconds from the first fork to the last child's exit.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _warm() -> None:
    """Import what a run imports (models load in the run's sandbox, not here)."""
    import marketplace_dagster.definitions  # noqa: F401


def _run(partition: str) -> bool:
    import gc

    import dagster as dg

    from marketplace.config import load_config
    from marketplace_dagster.definitions import build_definitions
    from marketplace_dagster.partitions import partition_tags, split_partition_key

    job = build_definitions(load_config()).resolve_job_def("marketplace_sync_job")
    gc.freeze()  # as the code location's `defs` does
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            tags=partition_tags(*split_partition_key(partition)),
        )
    return result.success


def main(argv: list[str]) -> int:
    partitions = argv
    _warm()
    started = time.perf_counter()
    children = []
    for partition in partitions:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if _run(partition) else 1
            finally:
                os._exit(code)
        children.append(pid)
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)
    print(json.dumps({"seconds": time.perf_counter() - started, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
