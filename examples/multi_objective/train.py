"""Two objectives: accuracy (maximize) against model size (minimize), with NSGA-II.

A scikit-learn MLPClassifier on the bundled digits data (no download). There is no single best
trial: the search ends with a Pareto front of trials that no other trial beats on both.

Run:  python examples/multi_objective/train.py        (from any directory)
"""

from __future__ import annotations

import warnings
from typing import Any

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from hparam_search import current_trial, hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config: dict[str, Any]) -> dict[str, float]:
    """Fit one MLP; return both objectives by the names listed under `metrics:`."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x / 16.0, y, test_size=config["val_fraction"], random_state=config["data_seed"],
        stratify=y)
    trial = current_trial()
    model = MLPClassifier(hidden_layer_sizes=(config["hidden_size"],) * config["n_layers"],
                          alpha=config["alpha"], max_iter=config["max_iter"],
                          random_state=trial.number if trial is not None else 0)
    with warnings.catch_warnings():
        # A fixed, small max_iter is the point (fast trials): not converging is expected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    n_parameters = sum(w.size for w in model.coefs_) + sum(b.size for b in model.intercepts_)
    return {"accuracy": model.score(x_val, y_val), "n_parameters": n_parameters}


if __name__ == "__main__":
    train()
