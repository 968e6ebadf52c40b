"""The fast path on CPU: configuration, graph signatures and capture fallbacks, fused weights, host timesteps."""

import numpy as np
import pytest
import torch

from sdplay.accel.fastgraphs import GraphedForward, SharedPool, eager_recorder, install, signature, uninstall
from sdplay.accel.fastpath import FastConfig, accelerate, fuse_qkv, host_timesteps
from sdplay.errors import InvalidRequest
from sdplay.types import GenerationRequest


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 3, "seed": 7}
    return GenerationRequest(**(base | kw))


def test_config_parses_overrides_and_rejects_unknown_names():
    cfg = FastConfig.parse("compile=none, vae=off,dynamic=false,max-graphs=3,regions=A+B")
    assert (cfg.compile, cfg.vae, cfg.dynamic, cfg.max_graphs, cfg.regions) == ("none", "off", False, 3, ("A", "B"))
    assert FastConfig.parse("dynamic=none").dynamic is None
    assert FastConfig.parse("") == FastConfig()
    with pytest.raises(InvalidRequest, match="Unknown fast-path option"):
        FastConfig.parse("turbo=1")


def test_signature_keys_shapes_dtypes_strides_modes_and_scalars():
    x = torch.randn(2, 4, 8, 8)
    key, tensors = signature((x, 3), {"flag": True, "extra": None}, "cpu")
    assert len(tensors) == 1
    assert key == signature((torch.randn(2, 4, 8, 8), 3), {"flag": True, "extra": None}, "cpu")[0]
    assert key != signature((torch.randn(1, 4, 8, 8), 3), {"flag": True, "extra": None}, "cpu")[0]
    assert key != signature((x.half(), 3), {"flag": True, "extra": None}, "cpu")[0]
    assert key != signature((x.to(memory_format=torch.channels_last), 3), {"flag": True, "extra": None}, "cpu")[0]
    assert key != signature((x, 4), {"flag": True, "extra": None}, "cpu")[0]
    with torch.inference_mode():
        assert key != signature((x, 3), {"flag": True, "extra": None}, "cpu")[0]
    assert signature((x, object()), {}, "cpu") is None  # not something a static buffer can hold


def test_host_scalars_are_allowed_only_when_the_device_is_not_the_host():
    t = torch.tensor(999)
    assert signature((t,), {}, "cpu")[0][3][0] == "tensor"
    assert signature((t,), {}, "cuda:0")[0][3][0] == "host-scalar"
    assert signature((torch.zeros(3),), {}, "cuda:0") is None  # a whole host tensor: run eagerly


def counting(fn):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped, calls


def test_graphs_replay_per_signature_and_outputs_do_not_alias():
    fn, _calls = counting(lambda x, scale=1.0: (x * scale + 1, {"sum": x.sum()}))
    g = GraphedForward(fn, "cpu", eager_recorder, "f", max_graphs=2)
    a, b = torch.randn(3), torch.randn(3)
    out_a = g(a, scale=2.0)
    out_b = g(b, scale=2.0)
    assert torch.equal(out_a[0], a * 2 + 1) and torch.equal(out_b[0], b * 2 + 1)  # a's output kept its values
    assert torch.equal(out_b[1]["sum"], b.sum())
    assert g.stats.captures == 1 and g.stats.replays == 2
    g(torch.randn(5), scale=2.0)
    g(a, scale=3.0)  # a third signature evicts the least recently used
    assert g.stats.captures == 3 and g.stats.evictions == 1 and len(g.graphs) == 2


def test_capture_failure_runs_eagerly_and_is_remembered():
    def broken_recorder(run, pool):
        raise RuntimeError("operation not permitted when stream is capturing")

    fn, calls = counting(lambda x: x + 1)
    g = GraphedForward(fn, "cpu", broken_recorder, "f")
    x = torch.randn(4)
    assert torch.equal(g(x), x + 1) and torch.equal(g(x), x + 1)
    assert g.stats.captures == 0 and g.stats.eager_calls == 2 and len(g.stats.failures) == 1 and len(calls) == 2
    assert "stream is capturing" in g.stats.failures[0]


def test_uncapturable_arguments_and_disabled_graphs_run_eagerly():
    fn, calls = counting(lambda x, cb=None: x * 2)
    g = GraphedForward(fn, "cpu", eager_recorder, "f")
    assert torch.equal(g(torch.ones(2), cb=print), torch.full((2,), 2.0))
    g.enabled = False
    g(torch.ones(2))
    assert g.stats.eager_calls == 2 and g.stats.captures == 0 and len(calls) == 2


def test_graphs_share_one_pool_handle():
    seen = []

    def recorder(run, pool):
        seen.append(pool)
        replay, outputs, _ = eager_recorder(run, pool)
        return replay, outputs, "pool-1"

    pool = SharedPool()
    a = GraphedForward(lambda x: x + 1, "cpu", recorder, "a", pool=pool)
    b = GraphedForward(lambda x: x - 1, "cpu", recorder, "b", pool=pool)
    a(torch.ones(1))
    b(torch.ones(1))
    assert seen == [None, "pool-1"]


def test_install_is_idempotent_and_reversible():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    expected = lin(x)
    g = install(lin, "cpu", eager_recorder)
    assert install(lin, "cpu", eager_recorder) is g
    assert torch.allclose(lin(x), expected) and g.stats.captures == 1
    uninstall(lin)
    assert "forward" not in lin.__dict__


def test_host_timesteps_keeps_timesteps_on_the_host():
    from diffusers import DDIMScheduler

    sched = host_timesteps(host_timesteps(DDIMScheduler()))
    sched.set_timesteps(10, device="meta")
    assert sched.timesteps.device.type == "cpu" and len(sched.timesteps) == 10


def test_fused_projections_share_storage_and_keep_outputs(tiny_models):
    from sdplay.bench.probes import unet_inputs, weight_bytes
    from sdplay.engine import Engine

    loaded, _ = Engine(fast=False).load(str(tiny_models["sd2"]))
    pipe = loaded.pipe
    args, kwargs = unet_inputs(pipe, 2, 64, 64, host_timestep=False)
    with torch.inference_mode():
        before = pipe.unet(*args, **kwargs)[0]
    size = weight_bytes(pipe)
    assert fuse_qkv(pipe) == ["unet", "vae"]
    with torch.inference_mode():
        after = pipe.unet(*args, **kwargs)[0]
    assert torch.allclose(before, after, atol=1e-5)
    assert weight_bytes(pipe) == size  # q/k/v are views of the fused weight


def test_accelerated_pipeline_matches_eager_images(engine, tiny_models):
    from sdplay.engine import Engine

    eager = engine.generate(req(tiny_models["sdxl"]))
    fast_engine = Engine(fast=False)
    loaded, _ = fast_engine.load(str(tiny_models["sdxl"]))
    config = FastConfig(backend="eager", vae="graph", text="graph")
    choices = accelerate(loaded.pipe, loaded.device, config, recorder=eager_recorder)
    assert choices["cuda_graphs"] == ["text_encoder", "text_encoder_2", "unet", "vae.decoder"]
    assert choices["host_timesteps"] and choices["compiled"] == ["unet: 4 blocks (BasicTransformerBlock)"]
    fast = fast_engine.generate(req(tiny_models["sdxl"]))
    again = fast_engine.generate(req(tiny_models["sdxl"], seed=8))
    a, b = np.asarray(eager.images[0], dtype=np.int16), np.asarray(fast.images[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - np.asarray(again.images[0], dtype=np.int16)).mean() > 1
    stats = loaded.pipe.sdplay_fast.stats()
    assert stats["unet"]["captures"] == 1 and stats["unet"]["replays"] == 2 * 3 and not stats["unet"]["failures"]


def test_fast_path_is_off_on_cpu_by_default(engine, tiny_models):
    res = engine.generate(req(tiny_models["sd1"]))
    assert str(res.metadata["optimisation"]["fast_path"]).startswith("off")


def test_auto_compile_is_chosen_per_family_and_explicit_choices_win():
    from sdplay.accel.fastpath import resolve
    from sdplay.catalog import Family

    auto = FastConfig()
    assert (resolve(auto, Family.SD1).compile, resolve(auto, Family.SD1).dynamic) == ("full", None)
    assert (resolve(auto, Family.SD2).compile, resolve(auto, Family.SD2).dynamic) == ("full", None)
    assert (resolve(auto, Family.SDXL).compile, resolve(auto, Family.SDXL).dynamic) == ("regional", True)
    assert resolve(auto, None).compile == "regional"
    assert resolve(FastConfig.parse("compile=aot"), Family.SDXL).dynamic is False
    assert resolve(FastConfig.parse("compile=full"), Family.SDXL).dynamic is None
    assert FastConfig.parse("compile=aot,autotune=true").autotune is True
    assert resolve(FastConfig.parse("compile=regional"), Family.SD1).compile == "regional"
    assert resolve(FastConfig.parse("compile=full,dynamic=false"), Family.SDXL).dynamic is False
    assert resolve(FastConfig.parse("deepcache=3"), Family.SD1).compile == "regional"  # reuse needs per-block code
    assert FastConfig.parse("dynamic=auto").dynamic == "auto"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("vae=sometimes", "Unknown VAE mode"),
        ("vae_dtype=float8", "Unknown VAE dtype"),
        ("deepcache=-1", "negative"),
        ("compile=full,deepcache=3", "cannot be combined"),
        ("compile=aot,deepcache=3", "cannot be combined"),
        ("compile=everything", "Unknown compile mode"),
        ("fp8=true", "float8 matrix units"),
    ],
)
def test_impossible_options_are_refused_with_what_to_change(tiny_models, options, message):
    from sdplay.engine import Engine

    loaded, _ = Engine(fast=False).load(str(tiny_models["sd1"]))
    with pytest.raises(InvalidRequest, match=message) as err:
        accelerate(loaded.pipe, loaded.device, FastConfig.parse(options + ",backend=eager"), recorder=eager_recorder)
    assert err.value.hint


def test_graph_key_extra_keeps_one_graph_per_state():
    state = {"phase": "full"}
    fn, _calls = counting(lambda x: x * (2 if state["phase"] == "full" else 3))
    g = GraphedForward(fn, "cpu", eager_recorder, "f")
    g.key_extra = lambda: state["phase"]
    x = torch.ones(2)
    assert torch.equal(g(x), x * 2)
    state["phase"] = "cached"
    assert torch.equal(g(x), x * 3)
    state["phase"] = "full"
    assert torch.equal(g(x), x * 2)
    assert g.stats.captures == 2 and g.stats.replays == 3


def test_vae_dtype_option_changes_only_the_vae(tiny_models):
    from sdplay.engine import Engine

    loaded, _ = Engine(fast=False).load(str(tiny_models["sdxl"]))
    config = FastConfig.parse("compile=none,vae_dtype=bfloat16")
    choices = accelerate(loaded.pipe, loaded.device, config, recorder=eager_recorder)
    assert choices["vae_dtype"] == "bfloat16" and loaded.pipe.vae.dtype == torch.bfloat16
    assert loaded.pipe.unet.dtype == torch.float32


def test_to_pil_matches_diffusers_postprocess_bit_for_bit():
    from diffusers.image_processor import VaeImageProcessor

    from sdplay.run import to_pil

    x = torch.randn(3, 3, 40, 24, generator=torch.Generator().manual_seed(0)) * 1.3
    x[1] = 0.0  # what the safety checker leaves of a flagged image
    flags = [True, False, True]
    expected = VaeImageProcessor().postprocess(x, output_type="pil", do_denormalize=flags)
    for a, b in zip(expected, to_pil(x, flags), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_aotinductor_packages_need_the_experimental_flag_on_a_gpu():
    from sdplay.accel.fastpath import _check
    from sdplay.devices import DeviceInfo

    gpu = DeviceInfo("cuda:0", "cuda", 0, "NVIDIA H200")
    with pytest.raises(InvalidRequest, match="experimental") as err:
        _check(FastConfig.parse("compile=aoti"), gpu)
    assert "experimental=true" in err.value.hint and "compile=aot" in err.value.hint
    _check(FastConfig.parse("compile=aoti,experimental=true"), gpu)  # allowed when asked for
    _check(FastConfig.parse("compile=aoti"), DeviceInfo("cpu", "cpu", 0, "CPU"))  # the CPU path was tested
    _check(FastConfig.parse("compile=aot"), gpu)  # precompiled packages need no flag
