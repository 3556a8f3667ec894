"""A search that runs as a Slurm job array: every array task runs this same script, and all of
them share one study in PostgreSQL.

The model is deliberately small (logistic regression in NumPy on synthetic data) so that the
example runs anywhere; what it shows is the shape of a trial that survives preemption: a
checkpoint in the trial's folder after every epoch, resumed when the trial is retried.

Run:  hparam-search slurm submit examples/slurm/train.py --set storage=postgresql://...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hparam_search import current_trial, hparam_search, report


def make_data(seed: int, n: int = 2000, features: int = 20) -> tuple[np.ndarray, ...]:
    """The same synthetic binary classification problem in every trial."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    w = rng.normal(size=features)
    y = (x @ w + rng.normal(scale=2.0, size=n) > 0).astype(float)
    split = int(0.75 * n)
    return x[:split], y[:split], x[split:], y[split:]


def loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    return float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))


def save_checkpoint(path: Path, epoch: int, w: np.ndarray) -> None:
    # Write then rename: a task killed while writing leaves the previous checkpoint intact.
    tmp = path.with_name("tmp-" + path.name)
    np.savez(tmp, epoch=epoch, w=w)
    os.replace(tmp, path)


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config: dict[str, Any]) -> float:
    x_train, y_train, x_val, y_val = make_data(config["data_seed"])
    w, start = np.zeros(x_train.shape[1]), 0
    trial = current_trial()
    checkpoint = trial.dir / "last.npz" if trial is not None else None
    if checkpoint is not None and checkpoint.exists():  # a retry after preemption
        saved = np.load(checkpoint)
        w, start = saved["w"], int(saved["epoch"]) + 1
        print(f"resuming from epoch {start}", flush=True)
    rng = np.random.default_rng(config["data_seed"] + start)
    for epoch in range(start, config["epochs"]):
        order = rng.permutation(len(x_train))
        for batch in np.array_split(order, max(1, len(order) // config["batch_size"])):
            p = 1.0 / (1.0 + np.exp(-(x_train[batch] @ w)))
            grad = x_train[batch].T @ (p - y_train[batch]) / len(batch) + config["l2"] * w
            w = w - config["lr"] * grad
        val_loss = loss(w, x_val, y_val)
        if checkpoint is not None:
            save_checkpoint(checkpoint, epoch, w)
        report(val_loss, step=epoch)
    return loss(w, x_val, y_val)


if __name__ == "__main__":
    train()
