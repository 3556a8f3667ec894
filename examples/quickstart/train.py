"""Quickstart: tune an SVM on scikit-learn's bundled digits data set.

Run:  python examples/quickstart/train.py        (from any directory)
Then open the study with the optuna-dashboard command it prints.
"""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from hparam_search import current_trial, hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config: dict) -> float:
    """Fit one model with the trial's hyperparameters; return the validation error."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x / 16.0, y, test_size=config["val_fraction"], random_state=config["data_seed"])
    model = SVC(C=config["C"], gamma=config["gamma"], kernel=config["kernel"])
    model.fit(x_train, y_train)
    error = 1.0 - model.score(x_val, y_val)
    trial = current_trial()
    if trial is not None and trial.number == 0:
        print(f"worker {trial.rank}: first trial of study {trial.study_name}")
    return error


if __name__ == "__main__":
    train()
