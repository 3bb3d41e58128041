"""Experiment specs: YAML round trip, hashing, phases (repeat, rewind), sweeps and errors that name the field."""

from pathlib import Path

import pytest
import yaml

from prunekit import ConfigError
from prunekit.experiment import (
    Experiment,
    PrunePhase,
    Rewind,
    RewindPhase,
    TrainPhase,
    apply_sets,
    expand,
    experiment_from_dict,
    experiment_hash,
    experiment_to_dict,
    load_experiments,
    parse_rewind,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def spec(**changes):
    base = {
        "name": "t",
        "data": {"name": "digits"},
        "model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [16], "num_classes": 10}},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 0.01},
        "pruning": {"sparsity": 0.5},
        "phases": ["train", "prune", {"train": {"epochs": 1, "lr": 0.001}}],
    }
    base.update(changes)
    return base


def test_round_trip_through_yaml_gives_an_equal_experiment_and_hash():
    exp = experiment_from_dict(spec())
    text = yaml.safe_dump(experiment_to_dict(exp), sort_keys=False)
    back = experiment_from_dict(yaml.safe_load(text))
    assert back == exp and experiment_hash(back) == experiment_hash(exp)
    assert isinstance(exp.phases[0], TrainPhase) and exp.phases[0].config.epochs == 2
    assert isinstance(exp.phases[2], TrainPhase) and (exp.phases[2].config.epochs, exp.phases[2].config.lr) == (1, 0.001)
    assert exp.phases[2].config.optimizer == "adam"  # inherited from train:
    assert exp.epoch_budget == 3 and all(p.config.seed == 0 for p in exp.phases if isinstance(p, TrainPhase))
    # the file records phase configs as differences from train:
    assert experiment_to_dict(exp)["phases"] == [{"train": {}}, {"prune": {}}, {"train": {"epochs": 1, "lr": 0.001}}]


def test_hash_covers_what_changes_results_and_nothing_else():
    h = experiment_hash(experiment_from_dict(spec()))
    assert experiment_hash(experiment_from_dict(spec(name="other", protocol="label"))) == h
    # an equal phase list written differently: explicit epochs equal to the default, 2 vs 2.0
    same = spec(phases=[{"train": {"epochs": 2}}, {"prune": None}, {"train": {"epochs": 1, "lr": 1e-3}}], seed=0)
    assert experiment_hash(experiment_from_dict(same)) == h
    with_noop_rewind = spec(phases=["train", "prune", {"rewind": "none"}, {"train": {"epochs": 1, "lr": 0.001}}])
    assert experiment_hash(experiment_from_dict(with_noop_rewind)) == h
    for changed in (
        spec(seed=1),
        spec(pruning={"sparsity": 0.6}),
        spec(train={"epochs": 2, "lr": 0.02}),
        spec(eval={"after_prune": False}),
    ):
        assert experiment_hash(experiment_from_dict(changed)) != h


def test_repeat_unrolls_rounds_that_reach_the_target_geometrically():
    exp = experiment_from_dict(
        spec(pruning={"sparsity": 0.875}, phases=["train", {"repeat": {"times": 3, "phases": ["prune", "rewind", "train"]}}])
    )
    prunes = [p for p in exp.phases if isinstance(p, PrunePhase)]
    assert len(exp.phases) == 10 and [(p.round, p.rounds) for p in prunes] == [(1, 3), (2, 3), (3, 3)]
    # each round removes half of what is left: 1 - 0.125^(r/3)
    assert [p.target(0.875) for p in prunes] == pytest.approx([0.5, 0.75, 0.875])
    assert prunes[-1].target(0.875) == 0.875
    assert exp.epoch_budget == 2 * 4


@pytest.mark.parametrize(
    "text, expected",
    [
        ("none", Rewind()),
        ("init", Rewind("init")),
        ("reinit", Rewind("reinit")),
        ("step 500", Rewind("step", 500)),
        (None, Rewind()),
    ],
)
def test_rewind_shorthands(text, expected):
    assert parse_rewind(text) == expected
    assert parse_rewind(expected.shorthand()) == expected


def test_bare_rewind_phases_take_the_run_option():
    exp = experiment_from_dict(spec(rewind="step 7", phases=["train", "prune", "rewind", {"rewind": "reinit"}, "train"]))
    rewinds = [p.to for p in exp.phases if isinstance(p, RewindPhase)]
    assert rewinds == [Rewind("step", 7), Rewind("reinit")]
    assert experiment_from_dict(experiment_to_dict(exp)) == exp


def test_named_protocols_and_a_sweep_fan_out_by_cartesian_product():
    data = spec(
        phases=None,
        protocols={
            "oneshot": ["train", "prune", "train"],
            "iterative": ["train", {"repeat": {"times": 2, "phases": ["prune", "train"]}}],
        },
        protocol="oneshot",
        sweep={"pruning.sparsity": [0.5, 0.9], "protocol": ["oneshot", "iterative"], "seed": [0, 1, 2]},
    )
    del data["phases"]
    exps = expand(data)
    assert len(exps) == 12 and len({experiment_hash(e) for e in exps}) == 12
    # first key outermost
    assert [(e.target_sparsity, e.protocol, e.seed) for e in exps[:4]] == [
        (0.5, "oneshot", 0),
        (0.5, "oneshot", 1),
        (0.5, "oneshot", 2),
        (0.5, "iterative", 0),
    ]
    assert sum(isinstance(p, PrunePhase) for p in exps[3].phases) == 2


def test_identical_sweep_points_run_once():
    exps = expand(spec(sweep={"rewind": ["none", "init"], "seed": [0, 1]}))  # no rewind phase: rewind changes nothing
    assert len(exps) == 2 and [e.seed for e in exps] == [0, 1]


def test_set_overrides_keys_and_sweep_axes():
    d = apply_sets(spec(sweep={"seed": [0, 1]}), ["train.epochs=5", "pruning.scorer=random", "sweep.pruning.sparsity=[0.3,0.6]"])
    exps = expand(d)
    assert len(exps) == 4 and {e.target_sparsity for e in exps} == {0.3, 0.6}
    assert exps[0].train.epochs == 5 and exps[0].pruning is not None and exps[0].pruning.scorer.registry_name == "random"
    pinned = expand(apply_sets(spec(sweep={"seed": [0, 1], "pruning.sparsity": [0.3, 0.6]}), ["pruning.sparsity=0.7"]))
    assert [(e.seed, e.target_sparsity) for e in pinned] == [(0, 0.7), (1, 0.7)]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"phasez": []}, "phasez"),
        ({"seed": -1}, "seed"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"seed": 3}}, "train.seed"),
        ({"phases": ["train", {"prune": {"sparsity": 1.5}}]}, "phases[1].prune.sparsity"),
        ({"phases": ["train", {"train": {"momentun": 0.9}}]}, "phases[1].train.momentun"),
        ({"phases": ["train", "squeeze"]}, "phases[1]"),
        ({"phases": ["train", {"rewind": "step -3"}]}, "phases[1].rewind"),
        ({"phases": [{"repeat": {"times": 2, "phases": [{"repeat": {"phases": []}}]}}]}, "phases[0].repeat.phases[0].repeat"),
        ({"pruning": None}, "phases[1]"),
        ({"pruning": {"sparsity": 0.5, "scorer": "magnitud"}}, "pruning.scorer"),
        ({"model": {"name": "lenet"}}, "model.name"),
        ({"model": {"name": "mlp", "kwargs": {"widht": 3}}}, "model.kwargs"),
        ({"data": {"name": "digits", "options": {"colour": True}}}, "data.options"),
        ({"protocols": {"a": ["train", "prune"]}, "protocol": "a"}, "phases"),  # both phases: and protocols:
        ({"sweep": {"seed": 3}}, "sweep.seed"),
    ],
)
def test_errors_name_the_field(changes, field):
    data = spec(**changes)
    if data.get("phases") is None:
        data.pop("phases")
    with pytest.raises(ConfigError) as e:
        expand(data)
    assert e.value.field == field


def test_pruning_is_dropped_when_no_phase_prunes_so_dense_protocols_run_once():
    data = spec(protocols={"dense": ["train"], "oneshot": ["train", "prune", "train"]}, protocol="dense")
    del data["phases"]
    data["sweep"] = {"protocol": ["dense", "oneshot"], "pruning.sparsity": [0.5, 0.9]}
    exps = expand(data)
    assert [(e.protocol, e.pruning is None, e.target_sparsity) for e in exps] == [
        ("dense", True, 0.0),
        ("oneshot", False, 0.5),
        ("oneshot", False, 0.9),
    ]


def test_a_protocol_must_be_chosen_from_the_table():
    data = spec(protocols={"a": ["train", "prune"]}, protocol="b")
    del data["phases"]
    with pytest.raises(ConfigError) as e:
        expand(data)
    assert e.value.field == "protocol" and "a" in e.value.allowed


def test_sweep_errors_say_which_point():
    with pytest.raises(ConfigError, match=r"sweep point pruning.sparsity=1.5"):
        expand(spec(sweep={"pruning.sparsity": [0.5, 1.5]}))


def test_python_construction_checks_the_seed_of_every_phase():
    exp = experiment_from_dict(spec())
    with pytest.raises(ConfigError) as e:
        Experiment(exp.data, exp.model, seed=1, pruning=exp.pruning, phases=exp.phases)
    assert e.value.field == "phases[0].train.seed"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_load(path):
    exps = load_experiments(path)
    assert exps and all(e.epoch_budget > 0 and e.name == path.stem for e in exps)


def test_example_recipes_say_what_the_issue_asks():
    han = load_experiments(RECIPES / "han2015_lenet300.yaml")
    assert all(e.model.name == "lenet_300_100" and e.data.name == "mnist" for e in han)
    assert han[0].target_sparsity >= 0.918 and han[0].pruning is not None and han[0].pruning.overrides
    assert sum(isinstance(p, PrunePhase) for p in han[0].phases) >= 2  # iterative train-prune-retrain
    curve = load_experiments(RECIPES / "curve_lenet300.yaml")
    targets = sorted({e.target_sparsity for e in curve})
    assert len(targets) >= 10 and targets[0] == 0.0 and targets[-1] == 0.995 and {e.seed for e in curve} == {0, 1, 2}
    ovi = load_experiments(RECIPES / "oneshot_vs_iterative.yaml")
    protocols = ("oneshot", "iterative", "scratch")
    assert {(e.target_sparsity, e.protocol) for e in ovi} == {(s, p) for s in (0.9, 0.95, 0.98) for p in protocols}

    def final_weights_epochs(e):  # epochs that train the reported weights: after the last reinit (scratch), else all
        start = max((i for i, p in enumerate(e.phases) if isinstance(p, RewindPhase) and p.to.kind == "reinit"), default=-1)
        return sum(p.config.epochs for p in e.phases[start + 1 :] if isinstance(p, TrainPhase))

    assert len({final_weights_epochs(e) for e in ovi}) == 1  # the same budget for every protocol
    assert any(isinstance(p, RewindPhase) and p.to.kind == "reinit" for e in ovi if e.protocol == "scratch" for p in e.phases)
    han5 = load_experiments(RECIPES / "han2015_lenet5.yaml")
    assert {e.seed for e in han5} == {0, 1, 2} and all(e.model.name == "lenet5_caffe" for e in han5)
    layers = {"features.0", "features.3", "classifier.1", "classifier.3"}  # every weight layer of LeNet-5-Caffe
    pruned = [e for e in han5 if any(isinstance(p, PrunePhase) for p in e.phases)]  # the rest: dense controls
    assert len(pruned) >= 9 and all(e.pruning is not None and set(e.pruning.overrides) == layers for e in pruned)
    assert all(e.target_sparsity >= 0.917 for e in pruned)
