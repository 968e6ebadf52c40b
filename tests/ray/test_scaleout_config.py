"""Ray options, deployment options, the --ray flags and the wire format, without starting a cluster."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sdplay.cli.main import build_parser
from sdplay.cli.serve import settings_from_args
from sdplay.errors import DeviceOutOfMemory, InvalidRequest, SdplayError
from sdplay.loading import LoadOptions
from sdplay.server.scaleout import wire
from sdplay.server.scaleout.cli import options_from_args, wants_ray
from sdplay.server.scaleout.options import (
    HEAD_NODE_RESOURCE,
    RayOptions,
    engine_deployment_options,
    ingress_deployment_options,
    replica_load_options,
)
from sdplay.types import GenerationRequest, GenerationResult, PhaseTimings, StepInfo


def test_one_gpu_replica_per_gpu_autoscaled_by_default():
    opts = RayOptions().resolve({"CPU": 64, "GPU": 4})
    assert (opts.num_gpus, opts.max_replicas, opts.dispatch_slots) == (1.0, 4, 8)
    engine = engine_deployment_options(opts)
    assert engine["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert "num_replicas" not in engine
    scaling = engine["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 4, 1.0)
    assert engine["max_ongoing_requests"] == 2


def test_cpu_cluster_gets_cpu_replicas_and_fixed_counts_turn_autoscaling_off():
    opts = RayOptions(replicas=3, num_cpus=4).resolve({"CPU": 16})
    engine = engine_deployment_options(opts)
    assert engine["num_replicas"] == 3 and "autoscaling_config" not in engine
    assert engine["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 0}
    assert opts.dispatch_slots == 6
    assert RayOptions().resolve({"CPU": 8}).max_replicas == 1


def test_half_a_gpu_per_replica_doubles_the_maximum_and_flags_win():
    assert RayOptions(num_gpus=0.5).resolve({"GPU": 2}).max_replicas == 4
    assert RayOptions(max_replicas=3).resolve({"GPU": 8}).max_replicas == 3
    assert RayOptions(min_replicas=0, max_replicas=2).resolve({"GPU": 2}).min_replicas == 0


def test_impossible_options_are_refused_with_the_flag_to_change():
    with pytest.raises(InvalidRequest, match="--ray-max-replicas"):
        RayOptions(min_replicas=4, max_replicas=2).check()
    with pytest.raises(InvalidRequest, match="--ray-replicas"):
        RayOptions(replicas=0).check()
    with pytest.raises(InvalidRequest, match="max_ongoing_requests"):
        RayOptions(max_ongoing_requests=0).check()


def test_ingress_is_one_replica_pinned_to_the_head_node():
    ingress = ingress_deployment_options(RayOptions())
    assert ingress["num_replicas"] == 1 and ingress["ray_actor_options"]["resources"] == {HEAD_NODE_RESOURCE: 0.001}
    assert ingress["ray_actor_options"]["num_cpus"] == 0 and ingress["max_ongoing_requests"] >= 100


def test_serve_run_arguments_parse_by_field_type():
    opts = RayOptions.from_args({"replicas": "2", "num_gpus": "0.5", "preload": "a, b", "random_weights": "yes"})
    assert (opts.replicas, opts.num_gpus, opts.preload, opts.random_weights) == (2, 0.5, ("a", "b"), True)
    with pytest.raises(InvalidRequest, match="Unknown option"):
        RayOptions.from_args({"replica": "2"})
    with pytest.raises(InvalidRequest, match="replicas='two'"):
        RayOptions.from_args({"replicas": "two"})


def test_serve_flags_become_ray_options():
    args = build_parser().parse_args(
        ["serve", "--ray", "--ray-max-replicas", "8", "--ray-min-replicas", "0", "--ray-target-ongoing", "2",
         "--ray-gpus-per-replica", "1", "--ray-models-per-replica", "3", "--ray-address", "10.0.0.1:6379"]
    )  # fmt: skip
    assert wants_ray(args)
    opts = options_from_args(args)
    assert (opts.max_replicas, opts.min_replicas, opts.target_ongoing_requests) == (8, 0, 2.0)
    assert (opts.num_gpus, opts.models_per_replica, opts.address) == (1.0, 3, "10.0.0.1:6379")
    assert not wants_ray(build_parser().parse_args(["serve"]))
    with pytest.raises(InvalidRequest, match="Add --ray"):
        wants_ray(build_parser().parse_args(["serve", "--ray-replicas", "2"]))


LOAD_FLAGS = ["--no-fast", "--attention-slicing", "--vae-slicing", "--vae-tiling", "--cpu-offload",
              "--no-safety-checker"]  # fmt: skip


@pytest.fixture
def no_sdplay_env(monkeypatch):
    for name in ("SDPLAY_FAST", "SDPLAY_NO_FAST", "SDPLAY_LORA_DIR", "SDPLAY_RANDOM_WEIGHTS", "SDPLAY_VAE_TILING"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _ray_serve(argv: list[str]):
    args = build_parser().parse_args(["serve", "--ray", *argv])
    return settings_from_args(args), options_from_args(args)


def test_serve_load_flags_become_every_replicas_load_options(no_sdplay_env, tmp_path):
    settings, options = _ray_serve([*LOAD_FLAGS, "--lora-dir", str(tmp_path), "--ray-replicas", "2"])
    assert replica_load_options(settings, options) == LoadOptions(
        fast=False, attention_slicing=True, vae_slicing=True, vae_tiling=True, cpu_offload=True,
        safety_checker=False, lora_dir=str(tmp_path),
    )  # fmt: skip
    assert replica_load_options(settings, options) == settings.load_options()  # as `sdplay serve` without --ray
    no_sdplay_env.setenv("SDPLAY_FAST", "deepcache=3")
    settings, _ = _ray_serve([])
    load = replica_load_options(settings, RayOptions(random_weights=True))  # `serve run ...:build random_weights=1`
    assert (load.fast, load.fast_options, load.random_weights, load.vae_tiling) == (True, "deepcache=3", True, False)


def test_the_bound_application_hands_the_load_options_to_every_replica_engine(no_sdplay_env, tmp_path):
    pytest.importorskip("ray.serve")
    from sdplay.server.scaleout.app import application
    from sdplay.server.scaleout.client import RayEngineClient
    from sdplay.server.scaleout.replica import replica_engine

    settings, options = _ray_serve([*LOAD_FLAGS, "--lora-dir", str(tmp_path), "--ray-replicas", "2"])
    options = options.resolve({"CPU": 4})
    app = application(settings, options)
    # Ray's bound graph: ingress(engine(options, load), settings, options)
    engine_app = app._bound_deployment.init_args[0]
    replica_options, load = engine_app._bound_deployment.init_args
    assert replica_options == options and load == settings.load_options() and load.vae_tiling and not load.fast
    engine = replica_engine(replica_options, load)
    assert engine.options == load and engine.max_models == options.models_per_replica + 1
    assert engine.lora_folder.root == tmp_path
    client = RayEngineClient(None, options, load)
    assert client.options == load and client.lora_folder.root == tmp_path


def test_the_ray_client_plans_loras_from_the_lora_folder(no_sdplay_env, tmp_path):
    pytest.importorskip("ray.serve")
    from safetensors.torch import save_file

    from sdplay.engine import Engine
    from sdplay.server.scaleout.client import RayEngineClient

    save_file({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "ink.safetensors")
    client = RayEngineClient(None, RayOptions(), LoadOptions(lora_dir=str(tmp_path)))
    client._set_catalog({"models": Engine().models(), "samplers": ["Euler"]})  # as a replica answers
    assert [f.name for f in client.loras()] == ["ink"]
    planned = client.plan(GenerationRequest(prompt="a fox <lora:ink:0.5>", model="sdplay-emoji"))
    assert [(lo.file.name, lo.ref.weight) for lo in planned.loras] == [("ink", 0.5)]
    with pytest.raises(InvalidRequest, match="No LoRA named 'inc'") as err:
        client.plan(GenerationRequest(prompt="a fox <lora:inc:1>", model="sdplay-emoji"))
    assert "ink" in err.value.hint
    save_file({"lora_unet_up.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "wash.safetensors")
    client.refresh_loras()
    assert [f.name for f in client.loras()] == ["ink", "wash"]


def _result() -> GenerationResult:
    images = [Image.new("RGB", (16, 8), (10 * i, 200, 30)) for i in range(2)]
    request = GenerationRequest(prompt="p", model="m", n_images=2, seed=5, width=16, height=8)
    return GenerationResult(images, [5, 6], request, PhaseTimings(denoising=1.5, total=2.0), 123, [False, True],
                            {"model": "m"}, {"gpu_util": 50})  # fmt: skip


def test_results_travel_as_png_bytes_and_come_back_equal():
    sent = wire.to_wire(_result())
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in sent.pngs)
    got = wire.from_wire(sent, {"backend": "ray", "replica": "r1", "attempt": 2})
    assert [img.tobytes() for img in got.images] == [img.tobytes() for img in _result().images]
    assert (got.seeds, got.request, got.timings) == ([5, 6], _result().request, _result().timings)
    assert got.nsfw == [False, True] and got.peak_memory_bytes == 123 and got.telemetry == {"gpu_util": 50}
    assert got.metadata == {"model": "m", "serving": {"backend": "ray", "replica": "r1", "attempt": 2}}


def test_errors_keep_their_class_field_and_hint():
    err = wire.error_from(wire.error_event(DeviceOutOfMemory("Out of memory.", field="width", hint="Smaller.")))
    assert type(err) is DeviceOutOfMemory and (err.message, err.field, err.hint) == (
        "Out of memory.",
        "width",
        "Smaller.",
    )
    unknown = wire.error_from({"kind": "error", "type": "Conflict", "message": "m", "field": None, "hint": None})
    assert type(unknown) is SdplayError
    assert type(wire.error_from({"kind": "error", "type": "print", "message": "m"})) is SdplayError


def test_steps_carry_half_precision_latents_only_when_asked():
    latents = torch.randn(2, 4, 8, 8)
    info = StepInfo(3, 10, 0, 1, 0.5, latents, "sdxl")
    event = wire.step_event(info, with_latents=True)
    assert event["latents"].dtype == torch.float16
    back = wire.step_info(event)
    assert (back.step, back.total_steps, back.family) == (3, 10, "sdxl")
    assert torch.allclose(back.latents, latents, atol=1e-2)
    assert wire.step_info(wire.step_event(info, with_latents=False)).latents is None


def test_a_replica_runs_the_ingress_plan_on_its_device_as_its_own_engine_would_plan_it():
    pytest.importorskip("ray.serve")
    from sdplay.devices import resolve_device
    from sdplay.engine import Engine
    from sdplay.server.scaleout.client import RayEngineClient
    from sdplay.server.scaleout.replica import bind

    client = RayEngineClient(None, RayOptions())
    client._set_catalog({"models": Engine().models(), "samplers": ["Euler"]})
    planned = client.plan(GenerationRequest(prompt="p", model="emoji", sampler="euler_a", n_images=2, seed=-1))
    assert planned.device.id == "auto" and planned.request.seed >= 0 and planned.request.sampler == "Euler a"
    engine = Engine(device="cpu")
    cpu = resolve_device(engine.device, engine.devices())
    bound = bind(planned, cpu)
    assert bound.device == cpu and bound.request.device == "cpu" and bound.batch_key != planned.batch_key
    assert bound == engine.plan(planned.request)  # what re-planning on the replica used to give, without doing it
