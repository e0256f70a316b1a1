"""The public names of ``sje``: listed once, sorted, and all importable."""

from __future__ import annotations

import pytest

import sje


def test_all_is_sorted_without_duplicates() -> None:
    assert list(sje.__all__) == sorted(set(sje.__all__))


@pytest.mark.parametrize("name", sje.__all__)
def test_every_name_in_all_exists(name: str) -> None:
    assert getattr(sje, name) is not None


def test_lazy_names_resolve_to_their_defining_module() -> None:
    from sje.client import Client, Job
    from sje.client_async import AsyncClient
    from sje.models import JobState

    assert sje.Client is Client
    assert sje.Job is Job
    assert sje.AsyncClient is AsyncClient
    assert sje.JobState is JobState


def test_every_error_class_is_exported_and_rooted_at_sje_error() -> None:
    import sje.errors

    assert set(sje.errors.__all__) <= set(sje.__all__)
    for name in sje.errors.__all__:
        cls = getattr(sje, name)
        assert issubclass(cls, sje.SJEError)
        assert isinstance(cls.exit_code, int)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'sje' has no attribute 'Nope'"):
        _ = sje.Nope


def test_every_error_code_names_one_class_and_round_trips() -> None:
    from sje.errors import _BY_CODE, _subclasses, error_from_code

    everything = _subclasses(sje.SJEError)
    # the wire errors; subclasses elsewhere (e.g. a broker's, with extra details for its caller)
    # travel as their parent: same code
    classes = [c for c in everything if c.__module__ == "sje.errors"]
    for cls in everything:
        if cls not in classes:
            assert any(cls.code == c.code and issubclass(cls, c) for c in classes), cls
    assert len({c.code for c in classes}) == len(classes), "error codes must be unique"
    for cls in classes:
        rebuilt = error_from_code(cls.code, "m")
        assert type(rebuilt) is cls and rebuilt.message == "m"
    assert set(_BY_CODE.values()) == set(classes)
    assert type(error_from_code("no-such-code", "m")) is sje.SJEError
