"""The real engine, the test fake and the Ray client implement the whole engine interface, with its signatures."""

from __future__ import annotations

import inspect

import pytest
from fake_engine import FakeEngine

from sdplay.engine import Engine
from sdplay.protocol import EngineProtocol


def members() -> dict[str, object]:
    """The protocol's attributes and methods (by name), as declared in sdplay.protocol."""
    names = set(EngineProtocol.__annotations__) | {
        n for n, v in vars(EngineProtocol).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))
    }
    return {n: vars(EngineProtocol).get(n) for n in sorted(names)}


def ray_client():
    pytest.importorskip("ray.serve")
    from sdplay.server.scaleout.client import RayEngineClient
    from sdplay.server.scaleout.options import RayOptions

    return RayEngineClient(None, RayOptions())


@pytest.mark.parametrize("make", [Engine, FakeEngine, ray_client], ids=["engine", "fake", "ray-client"])
def test_implementation_has_every_member_with_its_parameters(make):
    engine = make()
    assert isinstance(engine, EngineProtocol)
    assert {"catalog", "plan", "generate", "generate_batch", "load", "unload", "options", "loras"} <= set(members())
    for name, declared in members().items():
        assert hasattr(engine, name), f"{type(engine).__name__} lacks {name}"
        if callable(declared):
            wanted = [p for p in inspect.signature(declared).parameters if p != "self"]
            given = inspect.signature(getattr(engine, name)).parameters
            assert all(p in given for p in wanted), f"{type(engine).__name__}.{name}{tuple(given)} lacks {wanted}"


def test_fake_engine_has_nothing_beyond_the_protocol_that_the_server_uses():
    extra = {n for n in vars(FakeEngine) if not n.startswith("_")} - set(members())
    assert extra == set(), f"the fake engine grew methods outside the protocol: {sorted(extra)}"
