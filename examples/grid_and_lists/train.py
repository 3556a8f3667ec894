"""Grids and lists of configurations, as written with params-proto's Sweep or superparams'
search(...), expressed in YAML: config/config.yaml is a product grid, config/zip.yaml an
explicit list of rows.

Run:  python examples/grid_and_lists/train.py                   (the product grid)
      python examples/grid_and_lists/train.py --config zip.yaml  (the zipped/chained rows)
"""

from __future__ import annotations

import math
from typing import Any

from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config: dict[str, Any]) -> float:
    """A made-up validation loss, instant to compute, so the example is about the grids.

    It is lowest near learning_rate 3e-3, batch_size 32 and 2 layers, like a real curve
    would be somewhere; swap in your own training loop.
    """
    lr_term = (math.log10(config["learning_rate"]) - math.log10(3e-3)) ** 2
    batch_term = 0.05 * abs(math.log2(config["batch_size"] / 32))
    depth_term = 0.1 * (config["n_layers"] - 2) ** 2
    return round(0.2 + lr_term + batch_term + depth_term, 6)


if __name__ == "__main__":
    train()
