"""Jobs on Dask distributed, for the bulk-parity chunks (:mod:`.bulk`) and the design sweep
(:mod:`.sweep`): an embedded :class:`dask.distributed.LocalCluster` of ``workers`` processes, the
scheduler at a ``cluster`` address, or (one worker, no address) this process. A job whose worker
fails or dies is retried twice; one that still fails is reported by index, never dropped silently.
Why Dask and not Ray: docs/benchmarks.md "Cluster engine"."""
from __future__ import annotations

from runtime.errors import ToolError, UserError

RETRIES = 2


def run_jobs(fn, jobs: list, workers: int = 1, cluster: str | None = None, *, progress: bool = False,
             desc: str = "jobs", unit: str = "job", local_errors=(OSError, ToolError)):
    """``fn(*job)`` for every job; returns ``(outs, lost)``: ``outs[k]`` is job k's result or None,
    ``lost`` one line per job that failed on every try. ``fn`` must be importable by the workers
    (a module-level function of this project)."""
    from tqdm import tqdm

    outs, lost = [None] * len(jobs), []
    if workers <= 1 and cluster is None:
        for k, job in enumerate(tqdm(jobs, desc=desc, unit=unit, disable=not progress, leave=False)):
            for attempt in range(RETRIES + 1):        # as the engine's retries
                try:
                    outs[k] = fn(*job)
                    break
                except local_errors as e:
                    if attempt == RETRIES:
                        lost.append(f"{unit} {k}: {type(e).__name__}: {e}")
        return outs, lost
    from dask.distributed import Client, LocalCluster, as_completed

    local = None
    if cluster is None:
        local = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        client = Client(local if local is not None else cluster)
    except (OSError, TimeoutError) as e:
        if local is not None:
            local.close()
        raise UserError(f"--cluster {cluster}: no Dask scheduler answered ({e})") from None
    try:
        futs = {client.submit(fn, *job, retries=RETRIES, pure=False): k for k, job in enumerate(jobs)}
        for fut in tqdm(as_completed(futs), total=len(futs), desc=desc, unit=unit, disable=not progress, leave=False):
            k = futs[fut]
            try:
                outs[k] = fut.result()
            except Exception as e:          # noqa: BLE001 -- reported per job, the rest still counts
                lost.append(f"{unit} {k}: {type(e).__name__}: {e}")
    finally:
        client.close()
        if local is not None:
            local.close()
    return outs, lost
