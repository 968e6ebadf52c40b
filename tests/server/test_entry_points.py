"""The same request through every entry point (CLI flags, native, OpenAI and A1111 APIs) becomes the same plan."""

from __future__ import annotations

import httpx
import pytest
from fake_engine import FakeEngine
from live import live_server, wait_job

from sdplay.types import GenerationRequest

# One request, with a model alias and a sampler alias: every dialect must resolve them the same way.
PROMPT, NEGATIVE, MODEL, SAMPLER, SEED = "a red fox", "blurry", "sd14", "euler_a", 42


def expected_plan():
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, model="sd-v1-4", n_images=2, steps=5,
                                guidance=6.5, width=64, height=64, seed=SEED, sampler="Euler a")  # fmt: skip
    return FakeEngine().plan(request)


def via_cli(server) -> object:
    from sdplay.cli.generate import request_from_args
    from sdplay.cli.main import build_parser

    argv = ["generate", PROMPT, "--negative", NEGATIVE, "--model", MODEL, "-n", "2", "--steps", "5",
            "--guidance", "6.5", "--size", "64x64", "--seed", str(SEED), "--sampler", SAMPLER]  # fmt: skip
    return FakeEngine().plan(request_from_args(build_parser().parse_args(argv)))


def via_native(server) -> object:
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "model": MODEL, "n_images": 2, "steps": 5,
            "guidance": 6.5, "width": 64, "height": 64, "seed": SEED, "sampler": SAMPLER}  # fmt: skip
    with server.client() as c:
        job_id = c.post("/api/v1/jobs", json=body).json()["id"]
        assert wait_job(c, job_id)["status"] == "done"
    return server.service.get(job_id).plan


def via_openai(server) -> object:
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "model": MODEL, "n": 2, "size": "64x64", "steps": 5,
            "guidance": 6.5, "seed": SEED, "sampler": SAMPLER, "response_format": "b64_json"}  # fmt: skip
    return _last_plan(server, "/v1/images/generations", body)


def via_a1111(server) -> object:
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "sampler_name": SAMPLER, "steps": 5, "cfg_scale": 6.5,
            "width": 64, "height": 64, "seed": SEED, "batch_size": 2, "n_iter": 1,
            "override_settings": {"sd_model_checkpoint": MODEL}}  # fmt: skip
    return _last_plan(server, "/sdapi/v1/txt2img", body)


def _last_plan(server, path: str, body: dict):
    before = set(server.service.jobs)
    response = httpx.post(server.url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    (job_id,) = set(server.service.jobs) - before
    return server.service.get(job_id).plan


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("entry"), FakeEngine(step_delay=0.001)) as live:
        yield live


@pytest.mark.parametrize("entry", [via_cli, via_native, via_openai, via_a1111], ids=lambda f: f.__name__[4:])
def test_every_entry_point_makes_the_same_plan(server, entry):
    plan, want = entry(server), expected_plan()
    assert plan.request == want.request  # every field: prompts, model, size, steps, guidance, sampler, seed, ...
    assert (plan.batch_key, plan.task, plan.sampler, plan.model.name, plan.family.name, plan.device.id) == (
        want.batch_key, want.task, want.sampler, want.model.name, want.family.name, want.device.id)  # fmt: skip
    assert plan.request.sampler == "Euler a" and plan.request.model == "sd-v1-4"
