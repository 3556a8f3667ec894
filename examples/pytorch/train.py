"""PyTorch on CPU: a one-hidden-layer MLP on scikit-learn's bundled digits data (no download).

Shows pruning with `report`, a per-epoch checkpoint in the trial's folder that an interrupted
trial's retry resumes from, and the final checkpoint stored as an artifact.

Run:  python examples/pytorch/train.py        (from any directory)
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from hparam_search import current_trial, hparam_search, report, save_artifact

# Unset in normal runs. When set (by the example's test, or by hand as in README.md), trial 0's
# first attempt writes its pid to this file in epoch 3 and waits there, so that its worker can
# be killed mid-trial and the retry seen resuming.
PAUSE_PID_FILE = os.environ.get("EXAMPLE_PAUSE_PID_FILE")


def load_data(config: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Digits as float tensors, split the same way in every trial (the split has its own seed)."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x / 16.0, y, test_size=config["val_fraction"], random_state=config["data_seed"],
        stratify=y)
    return (torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train),
            torch.tensor(x_val, dtype=torch.float32), torch.tensor(y_val))


def build(config: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(64, config["hidden_size"]), nn.ReLU(),
                          nn.Dropout(config["dropout"]), nn.Linear(config["hidden_size"], 10))
    if config["optimizer"] == "Adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    return model, optimizer


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Write then rename: a process killed while writing leaves the previous checkpoint intact.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config: dict[str, Any]) -> dict[str, float]:
    """Train for config["epochs"] epochs, resuming from trial.dir/last.pt when it exists."""
    trial = current_trial()
    # A retry gets a new trial number but the same parameters and folder: seeding from the
    # configuration's first number keeps every attempt of it on the same random stream.
    seed = 0 if trial is None else trial.number if trial.retry_of is None else trial.retry_of
    torch.manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)

    x_train, y_train, x_val, y_val = load_data(config)
    model, optimizer = build(config)
    # Called directly (`train({...})`) there is no trial folder: a fresh one, so that an old
    # last.pt is never mistaken for an interrupted run.
    folder = trial.dir if trial is not None else Path(tempfile.mkdtemp(prefix="digits_mlp_"))
    ckpt = folder / "last.pt"

    start, val_loss, accuracy = 0, float("nan"), 0.0
    if ckpt.exists():  # an earlier attempt of this configuration was interrupted
        state = torch.load(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])  # dropout continues where it stopped
        shuffle.set_state(state["shuffle_rng"])  # so does the batch order
        start, val_loss, accuracy = state["epoch"] + 1, state["val_loss"], state["accuracy"]
        print(f"resuming from {ckpt} at epoch {start}")
    # One line per attempt, saying where it started (the example's test reads it).
    with open(folder / "attempts.jsonl", "a") as f:
        f.write(json.dumps({"trial": trial and trial.number, "attempt": trial and trial.attempt,
                            "first_epoch": start}) + "\n")

    for epoch in range(start, config["epochs"]):
        if (PAUSE_PID_FILE and trial is not None and trial.number == 0 and trial.attempt == 1
                and epoch == 3):
            Path(PAUSE_PID_FILE).write_text(str(os.getpid()))
            time.sleep(300)
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle)
        for batch in order.split(config["batch_size"]):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        val_loss, accuracy = evaluate(model, x_val, y_val)
        print(f"epoch {epoch} val_loss {val_loss:.4f} accuracy {accuracy:.3f}")
        save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": epoch, "val_loss": val_loss, "accuracy": accuracy,
                               "torch_rng": torch.get_rng_state(),
                               "shuffle_rng": shuffle.get_state()})
        # Raises TrialPruned when the median pruner stops this trial; the checkpoint is
        # already written, so nothing else needs saving on the way out.
        report(val_loss, epoch)
        # An epoch here takes a fraction of a second, so a stop (Ctrl-C, SIGTERM, preemption)
        # loses at most that. With hour-long epochs, save inside the epoch on the way out
        # (and give it time with `stop_grace: 60` in the YAML):
        #     try:
        #         for step, batch in enumerate(batches): ...
        #     finally:
        #         if hparam_search.stopping():
        #             save_checkpoint(ckpt, {..., "epoch": epoch - 1, "step": step})

    # A retry of an attempt killed after its last checkpoint runs no epoch: the values come
    # from the checkpoint then.
    save_artifact(ckpt)  # listed and downloadable in optuna-dashboard
    return {"val_loss": val_loss, "accuracy": accuracy}


if __name__ == "__main__":
    train()
