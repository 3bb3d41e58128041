import pytest
import yaml

from prunekit import (
    NM,
    Block,
    ConfigError,
    Global,
    Magnitude,
    Polynomial,
    PruneRecipe,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
)
from prunekit.recipe import recipe_hash, set_path


def test_yaml_round_trip(tmp_path):
    r = PruneRecipe(
        sparsity=0.9, pattern=Block(1, 4), scorer=Magnitude(p=2), allocator=Global(0.95), schedule=Polynomial(0, 10, 2)
    )
    p = tmp_path / "r.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r
    assert yaml.safe_load(p.read_text())["pattern"] == "1x4"
    assert recipe_hash(load_recipe(p)) == recipe_hash(r)


def test_shorthands_and_defaults():
    r = recipe_from_dict({"pattern": "2:4", "scorer": "random", "schedule": {"name": "iterative", "rounds": 3}})
    assert r.pattern == NM(2, 4) and r.target == 0.5 and r.schedule.rounds == 3


@pytest.mark.parametrize(
    "data, field",
    [
        ({"sparsity": 1.2}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"sparsity": "lots"}, "sparsity"),
        ({"sparsity": 0.5, "pattern": "4:2"}, "pattern"),
        ({"sparsity": 0.5, "scorer": "magnitud"}, "scorer"),
        ({"sparsity": 0.5, "scorer": {"name": "magnitude", "q": 2}}, "scorer.q"),
        ({"sparsity": 0.5, "schedule": {"name": "polynomial", "begin": -3}}, "schedule.begin"),
        ({"sparsity": 0.5, "schedule": {"name": "polynomial", "every": "often"}}, "schedule.every"),
        ({"sparsity": 0.5, "mode": "sideways"}, "mode"),
        ({"sparsity": 0.5, "sparsiti": 0.5}, "sparsiti"),
        ({"sparsity": 0.5, "targets": {"skip_first": "maybe"}}, "targets.skip_first"),
        ({"sparsity": 0.5, "version": 2}, "version"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        recipe_from_dict(data)
    assert e.value.field == field, str(e.value)


def test_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'magnitude'"):
        recipe_from_dict({"sparsity": 0.5, "scorer": "magnitud"})
    with pytest.raises(ConfigError, match="did you mean 'sparsity'"):
        recipe_from_dict({"sparsiti": 0.5})


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sparsity: [0.5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_set_path():
    d = {"scorer": "magnitude"}
    set_path(d, "scorer.p", 2)
    set_path(d, "schedule.end", 9)
    assert d == {"scorer": {"name": "magnitude", "p": 2}, "schedule": {"end": 9}}
