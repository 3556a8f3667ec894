"""Config validation: every mistake gives one exact, located message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hparam_search.config import load_config
from hparam_search.errors import HparamSearchError

BASE = """\
experiment_name: exp
tag: t
n_trials: 10
sweep_parameters:
  lr: {type: float, low: 1.0e-5, high: 0.1, log: true}
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()


def load(text: str | None, sets: tuple[str, ...] = (), name: str = "c.yaml"):
    path = Path("config") / name
    if text is not None:
        path.write_text(text)
    return load_config(path.resolve(), list(sets))


def error_of(text: str | None, sets: tuple[str, ...] = ()) -> str:
    with pytest.raises(HparamSearchError) as info:
        load(text, sets)
    return str(info.value)


def test_valid_config_defaults_and_fixed_values() -> None:
    cfg = load(BASE + "hidden_layers: 8\nmodel: {depth: 2}\n")
    assert cfg.study_name == "exp_t"
    assert (cfg.direction, cfg.n_jobs, cfg.n_trials, cfg.n_startup_trials) == ("minimize", 1, 10, 10)
    assert cfg.seed is None and cfg.fail_fast == 5
    assert cfg.fixed["hidden_layers"] == 8 and cfg.fixed["model"] == {"depth": 2}
    assert "sweep_parameters" not in cfg.fixed
    (lr,) = cfg.params
    assert (lr.name, lr.type, lr.low, lr.high, lr.log) == ("lr", "float", 1e-5, 0.1, True)


def test_n_jobs_minus_one_means_every_core() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert load(BASE + "n_jobs: -1\n").n_jobs == expected


def test_yaml_1_2_floats_are_floats() -> None:
    cfg = load(BASE + "wd: 1e-3\n")
    assert cfg.fixed["wd"] == 0.001


CASES = {
    "missing file": (None, (), "config/c.yaml: config file not found. Check the path, or pass "
                     "--config PATH."),
    "syntax": ("experiment_name: exp\ntag: [t\nn_trials: 3\n", (),
               "config/c.yaml:3: YAML syntax error: expected ',' or ']', but got ':'. Check "
               "indentation, colons and quotes around this line."),
    "empty": ("", (), "config/c.yaml: the config file is empty. Add experiment_name, tag, "
              "n_trials and sweep_parameters."),
    "top level list": ("- a\n- b\n", (), "config/c.yaml:1: the top level must be a mapping of "
                       "key: value, not a list. Start with lines like 'experiment_name: my_exp'."),
    "duplicate key": ("experiment_name: a\nexperiment_name: b\n", (),
                      "config/c.yaml:2: experiment_name: the key appears twice (first on line "
                      "1). Keep one of them."),
    "setting typo": (BASE + "n_trails: 5\n", (),
                     "config/c.yaml:6: n_trails: unknown study setting. Did you mean 'n_trials'?"),
    "unknown type": (BASE.replace("type: float", "type: flot"), (),
                     "config/c.yaml:5: sweep_parameters.lr.type: unknown parameter type (got "
                     "'flot'). Did you mean 'float'?"),
    "low above high": (BASE.replace("low: 1.0e-5", "low: 1.0"), (),
                       "config/c.yaml:5: sweep_parameters.lr.low: must be <= high (0.1) (got "
                       "1.0). Swap low and high."),
    "log with low 0": (BASE.replace("low: 1.0e-5", "low: 0"), (),
                       "config/c.yaml:5: sweep_parameters.lr.low: must be > 0 when log is true "
                       "(got 0.0). Use a positive low or drop log."),
    "log int low 0": (BASE.replace("type: float, low: 1.0e-5, high: 0.1", "type: int, low: 0, high: 9"),
                      (), "config/c.yaml:5: sweep_parameters.lr.low: must be >= 1 when log is "
                      "true (got 0). Use a positive low or drop log."),
    "log with step": (BASE.replace("log: true", "log: true, step: 0.1"), (),
                      "config/c.yaml:5: sweep_parameters.lr.step: cannot be combined with log: "
                      "true (got 0.1). Drop step, or set log: false."),
    "empty choices": (BASE + "  opt: {type: categorical, choices: []}\n", (),
                      "config/c.yaml:6: sweep_parameters.opt.choices: must be a non-empty list "
                      "(got []). Write e.g. 'choices: [Adam, SGD]'."),
    "non-scalar choice": (BASE + "  opt: {type: categorical, choices: [[1, 2]]}\n", (),
                          "config/c.yaml:6: sweep_parameters.opt.choices.0: each choice must be "
                          "a YAML scalar (string, number, true/false or null) (got [1, 2]). "
                          "Name the option with a string and build the object inside train."),
    "n_jobs 0": (BASE + "n_jobs: 0\n", (),
                 "config/c.yaml:6: n_jobs: must be an integer >= 1 (or -1 for one worker per "
                 "CPU core) (got 0)."),
    "n_jobs bool": (BASE + "n_jobs: true\n", (),
                    "config/c.yaml:6: n_jobs: must be an integer >= 1 (or -1 for one worker per "
                    "CPU core) (got true)."),
    "direction": (BASE + "direction: minimise\n", (),
                  "config/c.yaml:6: direction: must be minimize or maximize (got 'minimise'). "
                  "Did you mean 'minimize' or 'maximize'?"),
    "param not a mapping": (BASE.replace("{type: float, low: 1.0e-5, high: 0.1, log: true}", "0.1"),
                            (), "config/c.yaml:5: sweep_parameters.lr: must be a mapping with a "
                            "'type' (got 0.1). Write e.g. '{type: float, low: 0.0, high: 1.0}'."),
    "sweep not a mapping": ("experiment_name: exp\ntag: t\nn_trials: 3\nsweep_parameters: [a]\n",
                            (), "config/c.yaml:4: sweep_parameters: must be a mapping of "
                            "parameter name -> spec (got ['a']). Write one entry per parameter, "
                            "e.g. 'lr: {type: float, low: 1e-5, high: 1e-1}'."),
    "field typo": (BASE.replace("high: 0.1", "hihg: 0.1"), (),
                   "config/c.yaml:5: sweep_parameters.lr.hihg: unknown field for a float "
                   "parameter. Did you mean 'high'?"),
    "no type": (BASE.replace("type: float, ", ""), (),
                "config/c.yaml:5: sweep_parameters.lr: has no 'type'. Add 'type: float', "
                "'type: int' or 'type: categorical'."),
    "int bound float": (BASE.replace("type: float, low: 1.0e-5, high: 0.1, log: true",
                                     "type: int, low: 1, high: 2.5"), (),
                        "config/c.yaml:5: sweep_parameters.lr.high: must be an integer (got 2.5)."),
    "name leaves folder": (BASE.replace("experiment_name: exp", "experiment_name: ../evil"), (),
                           "config/c.yaml:1: experiment_name: must not contain '/', '\\' or '..' "
                           "or start with '.': it names the study's file inside "
                           "save_db_directory (got '../evil'). Use letters, digits, '-' and '_'."),
    "tag with slash": (BASE.replace("tag: t", "tag: a/b"), (),
                       "config/c.yaml:2: tag: must not contain '/', '\\' or '..' or start with "
                       "'.': it names the study's file inside save_db_directory (got 'a/b'). Use "
                       "letters, digits, '-' and '_'."),
    "missing n_trials": (BASE.replace("n_trials: 10\n", ""), (),
                         "config/c.yaml: n_trials: missing required setting. Add 'n_trials: ...' "
                         "to the file."),
    "sweep and fixed": (BASE + "lr: 0.1\n", (),
                        "config/c.yaml:5: sweep_parameters.lr: the sweep parameter also exists "
                        "as a fixed value 'lr'. Remove 'lr' from the fixed parameters, or this "
                        "sweep parameter."),
    "seed negative": (BASE + "seed: -1\n", (),
                      "config/c.yaml:6: seed: must be a non-negative integer or null (got -1)."),
    "fail_fast": (BASE + "fail_fast: -2\n", (),
                  "config/c.yaml:6: fail_fast: must be an integer >= 0 (0 turns it off) (got -2)."),
    "start method": (BASE + "start_method: thread\n", (),
                     "config/c.yaml:6: start_method: must be spawn, forkserver or fork (got "
                     "'thread')."),
    "--set n_jobs=0": (BASE, ("n_jobs=0",),
                       "command line (--set n_jobs=0): n_jobs: must be an integer >= 1 (or -1 "
                       "for one worker per CPU core) (got 0)."),
    "--set bad yaml": (BASE, ("lr=[1",),
                       "command line: --set lr=[1: the value is not valid YAML (while parsing a "
                       "flow sequence). Quote it for the shell, e.g. --set 'tag=\"my: tag\"'."),
    "--set no equals": (BASE, ("noequals",),
                        "command line: --set noequals: expected key=value. Write it like --set "
                        "n_trials=200 or --set model.dropout=0.1."),
    "--set through a scalar": (BASE, ("tag.x=1",),
                               "command line: --set tag.x=1: tag is a str, not a mapping, so it "
                               "has no key 'x'. Set tag itself, e.g. --set tag=..."),
    "--set sweep field": (BASE, ("sweep_parameters.lr.low=-1",),
                          "command line (--set sweep_parameters.lr.low=-1): "
                          "sweep_parameters.lr.low: must be > 0 when log is true (got -1.0). "
                          "Use a positive low or drop log."),
    "--set bad key": (BASE, ("a..b=1",),
                      "command line: --set a..b=1: 'a..b' is not a dotted key. Keys are names "
                      "joined by dots, like model.first_layer.bias."),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_mistake_has_one_exact_message(name: str) -> None:
    text, sets, expected = CASES[name]
    assert error_of(text, sets) == expected


def test_file_is_never_rewritten_by_overrides() -> None:
    path = Path("config/c.yaml")
    path.write_text(BASE)
    before = path.read_bytes()
    cfg = load_config(path.resolve(), ["n_trials=50", "model.first_layer.bias=False"])
    assert cfg.n_trials == 50
    assert path.read_bytes() == before


def test_overrides_create_nested_mappings_and_parse_yaml_scalars() -> None:
    cfg = load(BASE + "model: {depth: 2}\n", (
        "model.first_layer.bias=False", "wd=1e-3", "note=null", "sizes=[1, 2]",
        "name=plain text", "model.depth=3"))
    assert cfg.fixed["model"] == {"depth": 3, "first_layer": {"bias": False}}
    assert cfg.fixed["model"]["first_layer"]["bias"] is False
    assert cfg.fixed["wd"] == 0.001 and cfg.fixed["note"] is None
    assert cfg.fixed["sizes"] == [1, 2] and cfg.fixed["name"] == "plain text"


def test_override_values_are_never_python() -> None:
    cfg = load(BASE, ("evil=__import__('os').system('false')",))
    assert cfg.fixed["evil"] == "__import__('os').system('false')"


def test_override_of_study_settings_and_sweep_fields() -> None:
    cfg = load(BASE, ("n_jobs=3", "direction=maximize", "sweep_parameters.lr.high=0.5"))
    assert (cfg.n_jobs, cfg.direction, cfg.params[0].high) == (3, "maximize", 0.5)


def test_setting_a_swept_parameter_pins_it() -> None:
    cfg = load(BASE, ("lr=0.01",))
    assert cfg.params == () and cfg.fixed["lr"] == 0.01


def test_fixed_param_name_close_to_nothing_is_kept() -> None:
    cfg = load(BASE + "hidden_layers: 8\nbatch_size: 32\n")
    assert cfg.fixed["batch_size"] == 32


SEARCH = """\
experiment_name: exp
tag: t
n_trials: 10
sweep_parameters:
  lr: {type: float, low: 0.0, high: 1.0}
  opt: {type: categorical, choices: [Adam, SGD]}
"""

SEARCH_CASES = {
    "sampler type typo": (SEARCH + "sampler: {type: tpee}\n",
                          "config/c.yaml:7: sampler.type: unknown sampler (got 'tpee'). Did you "
                          "mean 'tpe'?"),
    "sampler option typo": (SEARCH + "sampler: {type: tpe, multivarate: true}\n",
                            "config/c.yaml:7: sampler.multivarate: not an option of the tpe "
                            "sampler. Did you mean 'multivariate'?"),
    "sampler managed option": (SEARCH + "sampler: {type: random, search_space: {}}\n",
                               "config/c.yaml:7: sampler.search_space: not an option of the "
                               "random sampler. It takes: no options."),
    "pruner type typo": (SEARCH + "pruner: {type: medain}\n",
                         "config/c.yaml:7: pruner.type: unknown pruner (got 'medain'). Did you "
                         "mean 'median'?"),
    "pruner option typo": (SEARCH + "pruner: {type: median, n_warmup_step: 3}\n",
                           "config/c.yaml:7: pruner.n_warmup_step: not an option of the median "
                           "pruner. Did you mean 'n_warmup_steps'?"),
    "pruner rejected by optuna": (SEARCH + "pruner: {type: percentile, percentile: 150}\n",
                                  "config/c.yaml:7: pruner: Optuna rejected these options: "
                                  "Percentile must be between 0 and 100 inclusive, but got "
                                  "percentile=150."),
    "patient without wrapped": (SEARCH + "pruner: {type: patient, patience: 2}\n",
                                "config/c.yaml:7: pruner: a patient pruner needs 'wrapped': the "
                                "pruner it delays. Write e.g. '{type: patient, patience: 3, "
                                "wrapped: {type: median}}'."),
    "grid float without step": (SEARCH.replace("n_trials: 10\n", "") + "sampler: grid\n",
                                "config/c.yaml:4: sweep_parameters.lr: a grid needs a step for "
                                "every float parameter. Add 'step: ...' to lr, or make it "
                                "categorical."),
    "grid smaller than n_trials": (SEARCH.replace("high: 1.0}", "high: 1.0, step: 0.5}")
                                   + "sampler: grid\n",
                                   "config/c.yaml:3: n_trials: is more than the grid's 6 points "
                                   "(got 10). Drop n_trials (it defaults to the grid size), or "
                                   "set it <= 6."),
    "enqueue unknown parameter": (SEARCH + "enqueue: [{lr: 0.5, optimiser: SGD}]\n",
                                  "config/c.yaml:7: enqueue.0.optimiser: is not a sweep "
                                  "parameter. Use names from sweep_parameters: lr, opt."),
    "enqueue outside the space": (SEARCH + "enqueue: [{lr: 2.0}]\n",
                                  "config/c.yaml:7: enqueue.0.lr: outside the search space "
                                  "(float [0.0, 1.0]) (got 2.0)."),
    "enqueue more than budget": (SEARCH.replace("n_trials: 10", "n_trials: 1")
                                 + "enqueue: [{lr: 0.1}, {lr: 0.2}]\n",
                                 "config/c.yaml:7: enqueue: lists 2 trials, more than n_trials "
                                 "(1). Raise n_trials or shorten the list."),
    "direction and directions": (SEARCH + "direction: minimize\ndirections: [minimize, maximize]\n",
                                 "config/c.yaml:8: directions: give either direction (one "
                                 "objective) or directions (several), not both. Remove "
                                 "'direction'."),
    "metrics length": (SEARCH + "directions: [minimize, maximize]\nmetrics: [loss]\n",
                       "config/c.yaml:8: metrics: must list 2 distinct names, one per direction "
                       "(got ['loss'])."),
    "when unknown parameter": (SEARCH + "  m: {type: float, low: 0.1, high: 0.9, when: {optim: SGD}}\n",
                               "config/c.yaml:7: sweep_parameters.m.when.optim: names a parameter "
                               "that is not in sweep_parameters. Did you mean 'opt'?"),
    "when impossible value": (SEARCH + "  m: {type: float, low: 0.1, high: 0.9, when: {opt: Sgd}}\n",
                              "config/c.yaml:7: sweep_parameters.m.when.opt: 'Sgd' is not a "
                              "value opt can take (got 'Sgd'). opt is categorical ['Adam', 'SGD']."),
    "pruning with two objectives": (SEARCH + "directions: [minimize, minimize]\npruner: median\n",
                                    "config/c.yaml:8: pruner: pruning works with one objective "
                                    "only. Remove 'pruner:' or use one direction."),
}


@pytest.mark.parametrize("name", list(SEARCH_CASES))
def test_every_search_mistake_has_one_exact_message(name: str) -> None:
    text, expected = SEARCH_CASES[name]
    assert error_of(text) == expected


def test_sampler_defaults_and_passthrough() -> None:
    cfg = load(SEARCH + "n_jobs: 2\nn_startup_trials: 4\nseed: 7\n")
    assert cfg.sampler.type == "tpe" and cfg.sampler.seed == 7
    assert cfg.sampler.options == {"n_startup_trials": 4, "constant_liar": True}
    cfg = load(SEARCH + "n_startup_trials: 4\nsampler: {type: tpe, n_startup_trials: 9, "
               "multivariate: true, group: true, seed: 5}\n")
    assert cfg.sampler.options == {"n_startup_trials": 9, "multivariate": True, "group": True}
    assert cfg.sampler.seed == 5
    assert load(SEARCH + "sampler: random\n").sampler.options == {}


def test_grid_points_and_default_budget() -> None:
    cfg = load(SEARCH.replace("n_trials: 10\n", "").replace("high: 1.0}", "high: 1.0, step: 0.5}")
               + "sampler: grid\n")
    assert cfg.n_trials == 6
    assert cfg.explicit[0] == {"lr": 0.0, "opt": "Adam"}
    assert {(p["lr"], p["opt"]) for p in cfg.explicit} == {
        (lr, o) for lr in (0.0, 0.5, 1.0) for o in ("Adam", "SGD")}


def test_conditions_are_ordered_after_what_they_read() -> None:
    cfg = load(SEARCH.replace("  lr: {type: float, low: 0.0, high: 1.0}\n",
                              "  lr: {type: float, low: 0.0, high: 1.0, when: {opt: SGD}}\n"))
    assert [p.name for p in cfg.params] == ["opt", "lr"]


def test_the_live_progress_line_fits_the_width_it_is_given() -> None:
    from hparam_search.console import Progress

    progress = Progress(target=300, done=123, running=8, pruned=40, errors=3, failed=2,
                        best_value=0.000123456, best_trial=77, finished_this_run=123)
    full = progress.text()
    assert "123/300 done" in full and "best 0.000123456 (trial 77)" in full
    for width in (120, 80, 60, 40, 20):
        line = progress.text(width)
        assert len(line) <= width and line.startswith("123/300 done")
    # Fields go least useful first: the rate before the best value, the best value last.
    assert "trials/min" not in progress.text(80) and "best" in progress.text(60)
