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
