"""Files trials saved with ``save_artifact``: where the study keeps them, and copying the
best trial's out. The metadata is Optuna's (``artifacts:<id>`` trial system attributes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import HparamSearchError
from .reader import StudyReader, TrialRecord

ARTIFACTS_ATTR_PREFIX = "artifacts:"  # Optuna's key prefix


def artifacts_dir(runs: list[dict[str, Any]]) -> Path | None:
    """The artifact folder the latest run used, when it exists on this machine."""
    for run in reversed(runs):
        folder = run.get("artifacts")
        if folder and Path(folder).is_dir():
            return Path(folder)
    return None


def artifact_store(runs: list[dict[str, Any]]) -> Any:
    """Optuna's file-system artifact store for the study, or None (optuna-dashboard then says
    artifacts are unavailable)."""
    folder = artifacts_dir(runs)
    if folder is None:
        return None
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(str(folder))


def trial_artifacts(record: TrialRecord) -> list[dict[str, Any]]:
    """The artifact metadata of one trial: id, filename, mimetype."""
    out = []
    for key, value in record.system_attrs.items():
        if key.startswith(ARTIFACTS_ATTR_PREFIX):
            meta = json.loads(value) if isinstance(value, str) else value
            if meta:
                out.append(meta)
    return out


def copy_artifacts(reader: StudyReader, record: TrialRecord, dest: Path) -> list[Path]:
    """Copy ``record``'s artifacts into ``dest`` under their original file names."""
    metas = trial_artifacts(record)
    if not metas:
        raise HparamSearchError(f"trial {record.number} saved no artifacts",
                                fix="Call hparam_search.save_artifact(path) inside train.")
    folder = artifacts_dir(reader.runs())
    if folder is None:
        raise HparamSearchError("the study's artifact folder is not on this machine",
                                fix="Run this where the search ran, or on its shared filesystem.")
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for meta in metas:
        target = dest / meta["filename"]
        if target.exists() and any(c == target for c in copied):  # same name twice
            target = dest / f"{meta['artifact_id']}-{meta['filename']}"
        shutil.copyfile(folder / meta["artifact_id"], target)
        copied.append(target)
    return copied
