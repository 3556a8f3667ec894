"""TensorBoard: one run folder per trial (``<log_dir>/trial-<number>``) with every reported
step as a scalar and, at the end, the HParams plugin's record of its parameters and final
values, so TensorBoard's HParams tab compares the trials. Written with tensorboardX's event
writer, synchronously: a few events per trial, and nothing left behind when a worker exits."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

NAME = "TensorBoard"


def prepare(options: dict[str, Any], *, files_root: str, study_name: str) -> dict[str, Any]:
    folder = Path(options.get("log_dir") or Path(files_root) / study_name / "tensorboard")
    folder.mkdir(parents=True, exist_ok=True)
    return {"log_dir": str(folder.resolve())}


class TensorBoardTrials:
    """One worker's trial runs."""

    NAME = NAME

    def __init__(self, context: Any) -> None:
        self.log_dir = Path(context.tensorboard["log_dir"])
        self.objectives = context.objectives
        self.events: Any = None
        self.params: dict[str, Any] = {}

    def start(self, info: Any, config: dict[str, Any]) -> dict[str, Any]:
        from tensorboardX.event_file_writer import EventsWriter

        run = self.log_dir / f"trial-{info.number}"
        run.mkdir(parents=True, exist_ok=True)
        self.events = EventsWriter(str(run / "events"))
        # The HParams tab compares what was searched: the sampled values (dotted names).
        self.params = {name: _scalar(value) for name, value in info.params.items()}
        return {}

    def _write(self, summary: Any, step: int = 0) -> None:
        from tensorboardX.proto import event_pb2

        self.events.write_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                summary=summary))

    def report(self, value: float, step: int) -> None:
        from tensorboardX.summary import scalar

        if self.events is not None:
            self._write(scalar(self.objectives[0], float(value)), step)
            self.events.flush()  # visible in TensorBoard while the trial runs

    def finish(self, result: Any, extra: dict[str, float]) -> None:
        from tensorboardX.summary import hparams, scalar

        if self.events is None:
            return
        try:
            values = result.value if isinstance(result.value, list) else (
                [result.value] if result.value is not None else [])
            metrics = {f"final/{name}": float(v) for name, v in zip(self.objectives, values)}
            metrics.update({f"final/{name}": float(v) for name, v in extra.items()})
            for summary in hparams({**self.params, "state": result.state}, metrics):
                self._write(summary)
            for name, value in metrics.items():
                self._write(scalar(name, value))
        finally:
            events, self.events = self.events, None
            events.close()

    def end_interrupted(self, trials: list[Any], state: str) -> None:
        pass  # a killed trial's folder holds what it reported; nothing more to write


def _scalar(value: Any) -> bool | str | float | int:
    return value if isinstance(value, (bool, str, float, int)) else str(value)
