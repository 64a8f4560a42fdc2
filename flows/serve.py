"""Serve the deployments: `default` (params.yaml) and `smoke` (studies/smoke.yaml).

Runs until stopped; `prefect deployment run 'kd-pipeline/default'` then schedules a run
that this process executes.
"""
from __future__ import annotations

from prefect import serve

from flows.pipeline import kd_pipeline


def main() -> None:
    serve(
        kd_pipeline.to_deployment(name="default", parameters={"params_path": "params.yaml"}),
        kd_pipeline.to_deployment(name="smoke", parameters={"params_path": "studies/smoke.yaml"}),
    )


if __name__ == "__main__":
    main()
