"""The Prefect cache policy every step's task shares: Prefect's key is the step's own key.

Imported only when a Prefect task is built (`common.prefect_task`), so the DVC entry points
never import Prefect.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from prefect.cache_policies import CachePolicy

from kdlib import artifacts
from tasks.common import store_dir
from tasks.tracking import PARENT_RUN

RESULT_RECORD = ".prefect-result"


@dataclass
class StoreCachePolicy(CachePolicy):
    """Keys `<step>/<key>/.prefect-result`, `key` from the step's `key_fn(**inputs)`.

    With result storage rooted at the store (`common.result_storage`), Prefect's cache record
    lives inside the artifact folder it describes: delete the folder and the record goes with
    it, so a cache hit never points at a missing artifact. A folder that fails its manifest
    check (shape or hashes) loses its record here, so the task runs and `run_in_store`
    quarantines the folder and rebuilds it under its lock.
    """

    step: str = ""
    key_fn: Callable[..., str] | None = None

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str:
        # the MLflow parent run is who logs, not what is built: never part of a key
        key = self.key_fn(**{name: value for name, value in inputs.items() if name != PARENT_RUN})
        folder = store_dir(inputs["cfg"], self.step, key)
        if folder.exists() and not artifacts.is_complete(folder):
            # a missing file, a bad hash or a manifest of the wrong shape: drop the record, so
            # the task runs and `run_in_store` quarantines and rebuilds the folder under its lock
            with contextlib.suppress(NotADirectoryError):
                (folder / RESULT_RECORD).unlink(missing_ok=True)
        return f"{self.step}/{key}/{RESULT_RECORD}"
