"""Bounded property-based fuzzing of the whole OpenAPI schema with schemathesis against a live server.

Checks: no 5xx, only documented status codes, content types and response bodies as documented, invalid
input rejected. Schema-valid input that is refused on its meaning (a size not a multiple of 8 in an OpenAI
`size` string, an Idempotency-Key reused for another body, a non-existent date) is allowed, so
`positive_data_acceptance` is left out; the A1111 API is lenient about types on purpose.
"""

from __future__ import annotations

import pytest
import schemathesis
from fake_engine import FakeEngine
from hypothesis import HealthCheck, Phase, settings
from live import live_server
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("fuzz"), FakeEngine(step_delay=0.0002), max_queue=256) as s:
        yield schemathesis.openapi.from_url(s.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case):
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if not case.path.startswith("/sdapi/"):  # A1111's API coerces types ("1" -> 1) as A1111 does; ours is strict
        checks.append(negative_data_rejection)
    case.call_and_validate(timeout=30, checks=checks)


@pytest.mark.slow
def test_stateful_sequences_with_every_check(api_schema):
    """Chains of calls (a job created, then read, cancelled, its images fetched, a gallery item deleted, ...) under
    every schemathesis check but `positive_data_acceptance`: no server error, every status, header, content type
    and body as documented. Schema-valid requests refused on their meaning (an unknown sampler, a seed whose
    images run past the largest seed, more work than the device does in its time limit, an Idempotency-Key
    reused for another body) are 4xx by design, which that one check would count as failures."""
    machine = api_schema.as_state_machine()
    recorded = machine.validate_response

    class Workflow(machine):  # type: ignore[misc, valid-type]
        def validate_response(self, response, case, additional_checks=None, **kwargs):
            __tracebackhide__ = True
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=[positive_data_acceptance],
                transport_kwargs=kwargs or None,
                recorder=getattr(self, "recorder", None),
            )

    assert recorded is not Workflow.validate_response
    Workflow.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )
