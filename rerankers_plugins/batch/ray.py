"""The ``ray`` engine: a job's pending shards run on Ray Data, one pipeline per actor.

The shards (each a pickled :class:`~rerankers_plugins.batch.inputs.Shard`: its queries and texts)
become the rows of a Ray dataset; ``map_batches`` with an actor pool (``ActorPoolStrategy``) hands
each actor one shard at a time. An actor builds the pipeline once, from the job's spec, and computes
a shard exactly as the local engine does (:func:`~rerankers_plugins.batch.engine.run_shard`); the
shard's rows come back to the driver, which writes them (:class:`~rerankers_plugins.batch.store.Store`).

So Ray never writes the output: a shard whose actor died is computed again by Ray on another actor
(or a restarted one) and written once, under its own name, when it arrives; a shard that arrives
twice is written once. User exceptions never fail the Ray job: ``run_shard`` retries a failing
block and quarantines its rows.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.batch.inputs import Shard
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.spec import Spec

__all__ = ["ShardWorker", "run_on_ray"]

logger = logging.getLogger(__name__)


class ShardWorker:
    """A Ray Data actor: builds the pipeline from ``spec`` once, then computes shards."""

    def __init__(self, spec: Spec, settings: Any, retries: int) -> None:
        from rerankers_plugins.batch.engine import _worker_name
        from rerankers_plugins.pipeline.rerank import check_options
        from rerankers_plugins.spec import build_pipeline

        self.settings = settings
        self.retries = retries
        self.strategy = check_options(build_pipeline(spec), settings.top_n, settings.threshold)
        self.worker = _worker_name()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from rerankers_plugins.batch.engine import run_shard

        results = []
        for payload in batch["payload"]:
            shard: Shard = pickle.loads(payload)
            result = run_shard(self.strategy, shard, self.settings, retries=self.retries, worker=self.worker)
            results.append(pickle.dumps(result))
        return {"shard": list(batch["shard"]), "result": results}


def run_on_ray(
    spec: Spec,
    shards: Sequence[Shard],
    settings: Any,
    on_result: Callable[[Any], None],
    *,
    retries: int,
    actors: int | None,
    num_cpus: float | None,
    num_gpus: float,
    address: str | None,
    progress: bool,
) -> None:
    """Compute ``shards`` on Ray Data; ``on_result(ShardResult)`` on the driver as each arrives."""
    ray = require("ray", "ray")
    ray_data = require("ray.data", "ray")

    if actors is not None and actors < 1:
        raise ConfigError(f"actors must be >= 1, got {actors!r}")
    if num_gpus < 0 or (num_cpus is not None and num_cpus <= 0):
        raise ConfigError(f"num_cpus must be > 0 and num_gpus >= 0, got {num_cpus!r} and {num_gpus!r}")
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started = True
    elif address is not None:
        logger.info("already connected to a Ray cluster; address=%s is not used", address)
    try:
        cpus = num_cpus if num_cpus is not None else 1.0
        size = actors or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
        context = ray_data.DataContext.get_current()
        context.enable_progress_bars = progress
        items = [{"shard": s.index, "payload": pickle.dumps(s)} for s in shards]
        dataset = ray_data.from_items(items, override_num_blocks=len(items))
        out = dataset.map_batches(
            ShardWorker,
            fn_constructor_kwargs={"spec": spec, "settings": settings, "retries": retries},
            batch_size=1,
            compute=ray_data.ActorPoolStrategy(size=min(size, len(items))),
            num_cpus=cpus,
            num_gpus=num_gpus,
        )
        rows = iter(out.iter_rows())
        try:
            for row in rows:
                on_result(pickle.loads(row["result"]))
        finally:  # a job stopped early (max_errors, Ctrl-C) stops its Ray execution and frees the actors
            close = getattr(rows, "close", None)
            if close is not None:
                close()
    finally:
        if started:
            ray.shutdown()
