"""`sdplay bench` on CPU with a tiny model: the report, its table, FLOP arithmetic and argument parsing."""

import json
import math

import pytest

from sdplay.bench import BenchConfig, flops, run_bench
from sdplay.bench.exactness import psnr, rel_error
from sdplay.bench.report import to_markdown
from sdplay.bench.variants import parse_variant, peer_options
from sdplay.cli.bench import variant_list
from sdplay.cli.main import main
from sdplay.errors import InvalidRequest


def test_variant_list_keeps_commas_inside_brackets():
    text = "diffusers, sdplay-eager,sdplay-fast[compile=none,vae=off],sdplay-fast[regions=A+B]"
    assert variant_list(text) == ("diffusers", "sdplay-eager", "sdplay-fast[compile=none,vae=off]",
                                  "sdplay-fast[regions=A+B]")  # fmt: skip
    assert parse_variant("sdplay-fast[compile=none,vae=off]") == ("sdplay-fast", "compile=none,vae=off")
    assert parse_variant("diffusers") == ("diffusers", None)
    with pytest.raises(InvalidRequest):
        parse_variant("comfy")
    assert parse_variant("diffusers-compile[mode=max-autotune]") == ("diffusers-compile", "mode=max-autotune")


def test_peer_options_default_to_the_speed_guide_recipe_and_reject_unknown_ones():
    assert peer_options(None) == {"mode": "reduce-overhead", "dynamic": "none", "backend": "inductor"}
    assert peer_options("mode=max-autotune")["mode"] == "max-autotune"
    with pytest.raises(InvalidRequest, match="Unknown diffusers-compile option"):
        peer_options("fullgraph=false")


def test_flop_table_only_at_native_size_and_mfu_arithmetic():
    assert flops.table_tflop("sd1", 512, 512) == (0.803, 2.515)
    assert flops.table_tflop("sdxl", 1024, 1024) == (6.761, 10.470)
    assert flops.table_tflop("sd1", 768, 512) is None
    assert flops.image_tflop(0.803, 2.515, 50, guided=True) == pytest.approx(50 * 2 * 0.803 + 2.515)
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "float16") == 989.4
    assert flops.peak_tflops("NVIDIA H100 PCIe", "float32") == 378.0
    assert flops.peak_tflops("AMD EPYC", "float32") is None
    assert flops.mfu(100.0, 0.5, 400.0) == pytest.approx(0.5)
    assert flops.mfu(100.0, 0.5, None) is None


def test_error_measures():
    import torch

    ref = torch.randn(100)
    assert rel_error(ref, ref) == 0.0
    assert rel_error(ref * 1.01, ref) == pytest.approx(0.01, rel=1e-4)
    assert math.isnan(rel_error(torch.full((3,), float("nan")), ref[:3]))
    import numpy as np

    img = np.zeros((4, 4, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf
    assert psnr(img, img + 1) == pytest.approx(10 * math.log10(255**2))


PEER_CPU = "diffusers-compile[backend=eager]"  # the peer's recipe, traced by Dynamo, without Inductor on a CPU


@pytest.fixture(scope="module")
def report(tiny_models):
    fast = "sdplay-fast[backend=eager,compile=regional]"  # on a CPU nothing is compiled unless asked for
    variants = ("diffusers", PEER_CPU, "sdplay-eager", fast)
    cfg = BenchConfig(models=(str(tiny_models["sd1"]),), device="cpu", steps=2, runs=2, warmup=0, max_batch=2,
                      large_runs=1, unet_iters=2, check=True, variants=variants)  # fmt: skip
    return run_bench(cfg, log=lambda _msg: None)


def test_report_has_every_variant_with_phases_and_throughput(report):
    model = report["models"][0]
    assert set(model["variants"]) == {
        "diffusers",
        PEER_CPU,
        "sdplay-eager",
        "sdplay-fast[backend=eager,compile=regional]",
    }
    peer = model["variants"][PEER_CPU]["setup"]
    assert peer["fused_qkv"] and peer["torch_compile"] == {"fullgraph": True, "mode": "reduce-overhead",
                                                           "dynamic": "none", "backend": "eager"}  # fmt: skip
    for name, res in model["variants"].items():
        assert len(res["e2e_s"]["runs"]) == 2 and res["e2e_s"]["median"] > 0
        assert res["images_per_s"] == pytest.approx(1 / res["e2e_s"]["median"])
        assert res["phases_s"]["text"] > 0 and res["phases_s"]["vae"] > 0 and res["phases_s"]["unet_call"] > 0
        assert res["unet_step_s"]["median"] > 0
        assert (res["large_batch"] is None) if "[" in name else (res["large_batch"]["batch"] == 2)  # probes: b1 only
        assert res["mfu"] is None  # no known peak for a CPU
    fast = model["variants"]["sdplay-fast[backend=eager,compile=regional]"]["setup"]["optimisation"]["fast_path"]
    assert fast["compiled"] and fast["config"]["backend"] == "eager"
    assert model["flops"]["source"].startswith("counted") and model["flops"]["image_tflop"] > 0
    json.dumps(report)  # the whole report is plain JSON


def test_fast_path_exactness_is_measured(report):
    check = report["models"][0]["exactness"]["fast_vs_eager"]
    assert [(u["batch"], u["height"]) for u in check["unet"]] == [(2, 64), (2, 128)]
    assert max(u["rel_error"] for u in check["unet"]) < 1e-4
    assert check["vae"]["rel_error"] < 1e-4 and check["image_max_abs_diff"] <= 1
    assert report["models"][0]["exactness"]["eager_vs_diffusers"]["image_psnr_db"] > 40
    assert report["models"][0]["exactness"]["peer_vs_diffusers"]["image_max_abs_diff"] <= 2


def test_markdown_table_has_a_row_per_variant(report):
    text = to_markdown(report)
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "variant" not in ln]
    assert len(rows) == 4
    assert all(len(r.split("|")) == len(rows[0].split("|")) for r in rows)
    assert "fast_vs_eager: image PSNR" in text


@pytest.mark.slow
def test_cli_bench_writes_json_and_markdown_with_a_restart_check(tiny_models, tmp_path, capsys):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["--device", "cpu", "--steps", "1", "--runs", "1", "--warmup", "0", "--max-batch", "1", "--unet-iters", "1"]
    files = ["--json", str(out_json), "--markdown", str(out_md)]
    code = main(["bench", "--model", str(tiny_models["sd2"]), *args, "--restart",
                 "--variants", "diffusers,sdplay-eager", *files])  # fmt: skip
    assert code == 0
    report = json.loads(out_json.read_text())
    restart = report["models"][0]["restart"]
    assert set(restart) == {"diffusers", "sdplay-eager"}
    assert all(r["first_image_s"] > 0 and r["load_s"] > 0 for r in restart.values())
    assert report["command"].startswith("sdplay bench")
    assert "| " in out_md.read_text() and "sdplay-eager" in capsys.readouterr().out
