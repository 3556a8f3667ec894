"""Where users already look: each trial also lands in MLflow and/or TensorBoard.

One small interface, one module per sink (mlflow.py, tensorboard.py). The launcher prepares
each configured sink once per run (``prepare``: the MLflow experiment and the study's parent
run); every worker opens ``TrialSinks`` and tells them when a trial starts, reports a step and
ends; whoever ends a trial from outside its worker (an interrupted one marked FAIL, one stopped
by trial_timeout) ends its runs (``end_interrupted``). A sink that fails says so once and is
switched off for that process: tracking never stops a search.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Locate, did_you_mean, fail_at

SINKS = {"mlflow": ("tracking_uri", "experiment"), "tensorboard": ("log_dir",)}
EXTRAS = {"mlflow": ("mlflow", "hparam-search[mlflow]"),
          "tensorboard": ("tensorboardX", "hparam-search[tensorboard]")}
RUN_ID_ATTR = "hparam_search:mlflow_run"  # trial system attribute: its MLflow run


@dataclass(frozen=True)
class TrackingSpec:
    """A validated ``tracking:`` section: the options of each sink that is on."""

    mlflow: dict[str, Any] | None = None
    tensorboard: dict[str, Any] | None = None

    @property
    def on(self) -> bool:
        return self.mlflow is not None or self.tensorboard is not None


def parse_tracking(raw: Any, locate: Locate) -> TrackingSpec:
    """Validate ``tracking:`` (both sinks off when absent); a sink's options may be empty
    (``tracking: {mlflow: {}}``) or ``true``."""
    if raw is None:
        return TrackingSpec()

    fail = functools.partial(fail_at, locate)

    if not isinstance(raw, Mapping):
        fail("tracking", "must be a mapping of sinks", raw,
             "Write e.g. 'tracking: {mlflow: {experiment: my_exp}, tensorboard: {}}'.")
    sinks: dict[str, dict[str, Any]] = {}
    for name, options in raw.items():
        if name not in SINKS:
            fail(f"tracking.{name}", "unknown tracking sink",
                 fix=did_you_mean(str(name), SINKS) or "Use mlflow or tensorboard.")
        if options is True or options is None:
            options = {}
        if options is False:
            continue
        if not isinstance(options, Mapping):
            fail(f"tracking.{name}", "must be a mapping of options (or true)", options)
        for key, value in options.items():
            if key not in SINKS[name]:
                fail(f"tracking.{name}.{key}", f"not an option of {name} tracking",
                     fix=did_you_mean(str(key), SINKS[name]) or
                     f"It takes: {', '.join(SINKS[name])}.")
            if value is not None and (not isinstance(value, str) or not value.strip()):
                fail(f"tracking.{name}.{key}", "must be a non-empty string", value)
        module, extra = EXTRAS[name]
        try:
            __import__(module)
        except ImportError:
            fail(f"tracking.{name}", f"{name} tracking needs the {module} package, which is "
                 "not installed", fix=f"pip install '{extra}'")
        sinks[name] = {k: v for k, v in options.items() if v is not None}
    return TrackingSpec(**sinks)


@dataclass
class Context:
    """What the launcher prepared, handed to every worker: resolved options per sink."""

    mlflow: dict[str, Any] | None = None
    tensorboard: dict[str, Any] | None = None
    storage: str = ""  # the study's storage, password masked, for tags
    objectives: list[str] = field(default_factory=lambda: ["value"])  # their metric names


def prepare(spec: TrackingSpec, *, study: Any, url: str, files_root: str, db_dir: str,
            study_name: str, objectives: list[str], say: Callable[[str], None]) -> Context:
    """In the launcher, before workers track anything: create what every worker shares."""
    from ..storage import mask_secrets

    context = Context(storage=mask_secrets(url), objectives=objectives)
    if spec.mlflow is not None:
        from . import mlflow as sink

        context.mlflow = sink.prepare(spec.mlflow, study=study, url=url, db_dir=db_dir,
                                      study_name=study_name, say=say)
    if spec.tensorboard is not None:
        from . import tensorboard as sink_tb

        context.tensorboard = sink_tb.prepare(spec.tensorboard, files_root=files_root,
                                              study_name=study_name)
    return context


def end_study(context: Context, complete: bool, say: Callable[[str], None]) -> None:
    """After a launcher's run (never raises: tracking never fails a search)."""
    if context.mlflow is not None:
        from . import mlflow as sink

        try:
            sink.end_study(context.mlflow, complete)
        except Exception as exc:  # noqa: BLE001 - the study is safe; the parent run stays
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            say(f"warning: MLflow tracking failed ({type(exc).__name__}: {first}); the parent "
                "run was not ended")


class TrialSinks:
    """The sinks of one worker process. Every call is safe: a failing sink warns once and
    goes quiet."""

    def __init__(self, context: Context | None) -> None:
        self._sinks: list[Any] = []
        self._warned: set[str] = set()
        if context is None:
            return
        if context.mlflow is not None:
            from . import mlflow as sink

            self._add("MLflow", lambda: sink.MlflowTrials(context))
        if context.tensorboard is not None:
            from . import tensorboard as sink_tb

            self._add("TensorBoard", lambda: sink_tb.TensorBoardTrials(context))

    def _add(self, name: str, make: Callable[[], Any]) -> None:
        sink = self._guard(name, make)
        if sink is not None:
            self._sinks.append(sink)

    def _guard(self, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - tracking never stops a search
            if name not in self._warned:
                self._warned.add(name)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                print(f"warning: {name} tracking failed ({type(exc).__name__}: {first}); the "
                      "search goes on, results stay in the study", file=sys.stderr, flush=True)
            return None

    def _each(self, method: str, *args: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sink in list(self._sinks):
            got = self._guard(sink.NAME, lambda s=sink: getattr(s, method)(*args))
            if sink.NAME in self._warned:
                self._sinks.remove(sink)  # it failed: no more tries in this process
            elif isinstance(got, dict):
                out.update(got)
        return out

    def start(self, info: Any, config: dict[str, Any]) -> dict[str, Any]:
        """A trial's train is about to run; returns system attributes to store on it."""
        return self._each("start", info, config)

    def report(self, value: float, step: int) -> None:
        self._each("report", value, step)

    def finish(self, result: Any, extra: dict[str, float]) -> None:
        self._each("finish", result, extra)

    def end_interrupted(self, trials: list[Any], state: str = "FAIL") -> None:
        """End the runs of trials stopped from outside their worker: marked FAIL because their
        process was lost, or PRUNED by ``trial_timeout``."""
        self._each("end_interrupted", trials, state)
