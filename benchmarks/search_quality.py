"""Search quality side by side: sequential TPE, this launcher with 4 workers, random search.

For each test function and seed, every method gets the same budget; the regret is the best value
found minus the known optimum. Sequential TPE and random search are raw Optuna in this process;
the launcher runs as a user runs it (a script with @hparam_search and config/config.yaml).

    python benchmarks/search_quality.py --seeds 5 --trials 60 --out benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import optuna
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def branin(c: dict) -> float:
    x1, x2 = c["x1"], c["x2"]
    b, cc, r, s, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 6, 10, 1 / (8 * math.pi)
    return (x2 - b * x1 ** 2 + cc * x1 - r) ** 2 + s * (1 - t) * math.cos(x1) + s


_A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
      [17, 8, 0.05, 10, 0.1, 14]]
_P = [[0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886], [0.2329, 0.4135, 0.8307, 0.3736, 0.1004,
      0.9991], [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650], [0.4047, 0.8828, 0.8732,
      0.5743, 0.1091, 0.0381]]
_ALPHA = [1.0, 1.2, 3.0, 3.2]


def hartmann6(c: dict) -> float:
    x = [c[f"x{i}"] for i in range(6)]
    return -sum(_ALPHA[i] * math.exp(-sum(_A[i][j] * (x[j] - _P[i][j]) ** 2 for j in range(6)))
                for i in range(4))


def rosenbrock4(c: dict) -> float:
    x = [c[f"x{i}"] for i in range(4)]
    return sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(3))


FUNCTIONS = {
    "branin": (branin, -0.0 + 0.397887,
               {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}),
    "hartmann6": (hartmann6, -3.32237, {f"x{i}": (0.0, 1.0) for i in range(6)}),
    "rosenbrock4": (rosenbrock4, 0.0, {f"x{i}": (-2.048, 2.048) for i in range(4)}),
}

USER_SCRIPT = '''
import sys
sys.path.insert(0, {bench!r})
from hparam_search import hparam_search
import search_quality


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    return search_quality.FUNCTIONS[config["function"]][0](config)


if __name__ == "__main__":
    train()
'''


def raw_optuna(name: str, sampler: optuna.samplers.BaseSampler, trials: int) -> float:
    fn, _, space = FUNCTIONS[name]
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: fn({k: t.suggest_float(k, lo, hi) for k, (lo, hi) in space.items()}),
                   n_trials=trials)
    return study.best_value


def launcher(name: str, seed: int, trials: int, n_jobs: int, startup: int, workdir: Path
             ) -> float:
    _, _, space = FUNCTIONS[name]
    run = workdir / f"{name}_{seed}"
    (run / "config").mkdir(parents=True)
    (run / "script.py").write_text(textwrap.dedent(USER_SCRIPT.format(bench=str(HERE))))
    config = {"experiment_name": "quality", "tag": f"{name}_{seed}", "function": name,
              "direction": "minimize", "n_jobs": n_jobs, "n_trials": trials,
              "n_startup_trials": startup, "seed": seed,
              "sweep_parameters": {k: {"type": "float", "low": lo, "high": hi}
                                   for k, (lo, hi) in space.items()}}
    (run / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, str(run / "script.py")], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    study = optuna.load_study(study_name=f"quality_{name}_{seed}",
                              storage=f"sqlite:///{run / 'optuna_studies' / f'quality_{name}_{seed}.db'}")
    assert len(study.trials) == trials
    return study.best_value


def summarise(regrets: list[float]) -> dict:
    q = statistics.quantiles(regrets, n=4) if len(regrets) > 1 else [regrets[0]] * 3
    return {"median": statistics.median(regrets), "q1": q[0], "q3": q[2], "all": regrets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--n-jobs", type=int, default=4)
    ap.add_argument("--startup", type=int, default=10)
    ap.add_argument("--functions", default=",".join(FUNCTIONS))
    ap.add_argument("--out", default=str(HERE / "results" / "quality.json"))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict = {"trials": args.trials, "n_jobs": args.n_jobs, "seeds": args.seeds,
                     "startup": args.startup, "functions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.functions.split(","):
            optimum = FUNCTIONS[name][1]
            rows: dict[str, list[float]] = {"sequential TPE": [], f"launcher n_jobs={args.n_jobs}":
                                            [], "random": []}
            for seed in range(args.seeds):
                tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.startup)
                rows["sequential TPE"].append(raw_optuna(name, tpe, args.trials) - optimum)
                rows[f"launcher n_jobs={args.n_jobs}"].append(
                    launcher(name, seed, args.trials, args.n_jobs, args.startup, Path(tmp))
                    - optimum)
                rows["random"].append(
                    raw_optuna(name, optuna.samplers.RandomSampler(seed=seed), args.trials)
                    - optimum)
            results["functions"][name] = {k: summarise(v) for k, v in rows.items()}
            print(name, {k: round(statistics.median(v), 4) for k, v in rows.items()}, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
