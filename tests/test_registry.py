import pytest

from prunekit import ALLOCATORS, PATTERNS, SCHEDULES, SCORERS, ConfigError
from prunekit.registry import Registry


def test_get_unknown_suggests_close_name_and_lists_all():
    with pytest.raises(ConfigError) as e:
        SCORERS.get("magnitud")
    msg = str(e.value)
    assert "did you mean 'magnitude'" in msg and "random" in msg


def test_register_twice_warns_and_replaces():
    r: Registry[int] = Registry("thing")
    r.register("a")(1)
    with pytest.warns(UserWarning, match="registered again"):
        r.register("a")(2)
    assert r.get("a") == 2


def test_every_registered_component_has_a_description():
    for reg in (SCORERS, ALLOCATORS, PATTERNS, SCHEDULES):
        for name, doc in reg.describe():
            assert doc, f"{reg.kind} {name} has no docstring"


def test_names_glob():
    assert "erk" in ALLOCATORS.names("er*") and "global" not in ALLOCATORS.names("er*")
