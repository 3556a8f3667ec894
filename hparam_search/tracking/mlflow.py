"""MLflow: one parent run per study, one nested run per trial, through ``MlflowClient`` (explicit
run ids: no global active run, so several workers and launchers log side by side).

A trial's run has its parameters (dotted names, fixed values as well), every reported step,
its final value(s) and every other number train returned, tags for the trial, and ends
FINISHED (COMPLETE), KILLED (stopped by the pruner, a timeout, or an interruption) or FAILED
(train raised, or returned no number)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

NAME = "MLflow"
PARENT_ATTR = "hparam_search:mlflow_parent"  # study system attribute: {tracking_uri, run_id}
_MAX_PARAM = 6000  # MLflow's limit on a parameter value's length


def quiet() -> None:
    """MLflow logs its store's errors with whole tracebacks; a failing sink says so in one
    line of ours instead (and its table-creation chatter is not news either)."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.CRITICAL)


def default_uri(db_dir: str) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{db_dir}/mlflow.db"


def prepare(options: dict[str, Any], *, study: Any, url: str, db_dir: str, study_name: str,
            say: Callable[[str], None]) -> dict[str, Any] | None:
    """The experiment and the study's parent run (made once, found again by later runs and
    other launchers through the study); None, after one warning line, when the tracking store
    cannot be reached."""
    from mlflow import MlflowClient

    from .. import storage as st

    quiet()
    uri = options.get("tracking_uri") or default_uri(db_dir)
    name = options.get("experiment") or study_name
    try:
        _check_reachable(uri)
        with st.budget_lock(url, study.study_name, getattr(study._storage, "_backend",
                                                           study._storage)):
            # Launchers starting together on a new store would each create its tables.
            client = MlflowClient(tracking_uri=uri)
            experiment = _experiment(client, name)
            parent = _parent_run(client, experiment, study, study_name)
    except Exception as exc:  # noqa: BLE001 - a store that is down never stops the search
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        say(f"warning: MLflow tracking at {st.mask_secrets(uri)} is unreachable ({first[:200]}); "
            "the search runs without it")
        return None
    return {"tracking_uri": uri, "experiment_id": experiment, "parent_run_id": parent,
            "experiment": name}


def _check_reachable(uri: str) -> None:
    """A tracking server that does not answer is found out in seconds, not after MLflow's
    own retries (minutes)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=5):
        pass


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - another launcher created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _parent_run(client: Any, experiment: str, study: Any, study_name: str) -> str:
    storage, sid = study._storage, study._study_id
    known = storage.get_study_system_attrs(sid).get(PARENT_ATTR) or {}
    uri = client.tracking_uri
    if known.get("tracking_uri") == uri:
        try:
            run = client.get_run(known["run_id"])
        except Exception:  # noqa: BLE001 - deleted meanwhile: make a new one
            pass
        else:
            if run.info.status != "RUNNING":  # an extended study runs again
                client.update_run(known["run_id"], status="RUNNING")
            return known["run_id"]
    run = client.create_run(experiment, run_name=study_name,
                            tags={"hparam_search.study": study_name})
    storage.set_study_system_attr(sid, PARENT_ATTR, {"tracking_uri": uri,
                                                     "run_id": run.info.run_id})
    return run.info.run_id


def end_study(options: dict[str, Any], complete: bool) -> None:
    """After a launcher's run: the parent run ends FINISHED once the study has its n_trials
    (a later, extended run sets it running again)."""
    if complete:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=options["tracking_uri"]).set_terminated(
            options["parent_run_id"], status="FINISHED")


class MlflowTrials:
    """One worker's trial runs."""

    NAME = NAME

    def __init__(self, context: Any) -> None:
        from mlflow import MlflowClient

        quiet()
        self.context = context
        self.options = context.mlflow
        self.client = MlflowClient(tracking_uri=self.options["tracking_uri"])
        self.run_id: str | None = None
        self.objectives = context.objectives
        self.last_step = 0

    def start(self, info: Any, config: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        from ..drift import flatten

        tags = {MLFLOW_PARENT_RUN_ID: self.options["parent_run_id"],
                "trial": str(info.number), "worker": str(info.rank),
                "attempt": str(info.attempt), "host": socket.gethostname(),
                "storage": self.context.storage, "study": info.study_name, "state": "RUNNING"}
        if info.retry_of is not None:
            tags["retry_of"] = str(info.retry_of)
        run = self.client.create_run(self.options["experiment_id"], run_name=f"trial {info.number}",
                                     tags=tags)
        self.run_id, self.last_step = run.info.run_id, 0
        params = [Param(key, str(value)[:_MAX_PARAM]) for key, value in
                  sorted(flatten(config).items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        from . import RUN_ID_ATTR

        return {RUN_ID_ATTR: self.run_id}

    def report(self, value: float, step: int) -> None:
        if self.run_id is not None:
            self.client.log_metric(self.run_id, self.objectives[0], float(value), step=step)
            self.last_step = max(self.last_step, step)

    def finish(self, result: Any, extra: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None
        now = int(time.time() * 1000)
        metrics = []
        values = result.value if isinstance(result.value, list) else (
            [result.value] if result.value is not None else [])
        # At the last reported step, logged last: MLflow shows it as the metric's value.
        for name, value in zip(self.objectives, values):
            metrics.append(Metric(name, float(value), now, self.last_step))
        metrics += [Metric(name, float(value), now, self.last_step)
                    for name, value in extra.items()]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        self.client.set_tag(run_id, "state", result.state)
        if result.reason:
            self.client.set_tag(run_id, "reason", result.reason[:5000])
        self.client.set_terminated(run_id, status=_status(result.state, result.pruned_by))

    def end_interrupted(self, trials: list[Any], state: str) -> None:
        from ..storage.attrs import FAIL_REASON_ATTR
        from ..storage.counts import PRUNE_REASON_ATTR
        from . import RUN_ID_ATTR

        for trial in trials:
            run_id = trial.system_attrs.get(RUN_ID_ATTR)
            if run_id:
                self.client.set_tag(run_id, "state", state)
                reason = trial.system_attrs.get(FAIL_REASON_ATTR) or \
                    trial.user_attrs.get(PRUNE_REASON_ATTR)
                if reason:
                    self.client.set_tag(run_id, "reason", str(reason)[:5000])
                self.client.set_terminated(run_id, status="KILLED")


def _status(state: str, pruned_by: str | None) -> str:
    """MLflow's end status for a trial's state: FINISHED, KILLED (stopped early) or FAILED."""
    if state == "COMPLETE":
        return "FINISHED"
    if state == "PRUNED" and pruned_by in ("pruner", "timeout"):
        return "KILLED"
    return "FAILED"
