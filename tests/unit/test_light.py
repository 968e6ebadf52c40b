"""The light runtime (sdplay.light) against diffusers and transformers: the same tensors, images and metadata, bit for
bit, and it is taken only where it covers the request."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sdplay.catalog import builtin
from sdplay.engine import Engine
from sdplay.images import metadata_for, png_bytes
from sdplay.loading import LoadOptions
from sdplay.types import GenerationRequest, HiresFix

EMOJI = builtin("sdplay-emoji").weights_dir
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def light():
    from sdplay.light.pipeline import LightPipeline

    return LightPipeline.from_folder(EMOJI)


@pytest.fixture(scope="module")
def engines():
    return Engine(LoadOptions(light=True), max_models=1), Engine(LoadOptions(), max_models=1)


def test_networks_equal_diffusers_and_transformers(light):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(EMOJI / "unet", dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(EMOJI / "vae", dtype=torch.float32).eval()
    for model in (unet, vae):
        model.set_attn_processor(AttnProcessor2_0())
    text = CLIPTextModel.from_pretrained(EMOJI / "text_encoder", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        # 16x16 latents, and 18x16 (not divisible by the UNet's factor 4: upsampling to the skip's size)
        for shape in [(2, 4, 16, 16), (3, 4, 18, 16), (1, 4, 8, 24)]:
            x, context = torch.randn(shape, generator=g), torch.randn(shape[0], 154, 96, generator=g)
            t = torch.tensor(501)
            want = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
            assert torch.equal(light.unet(x, t, encoder_hidden_states=context, return_dict=False)[0], want), shape
            assert torch.equal(light.vae.decode(x, return_dict=False)[0], vae.decode(x, return_dict=False)[0])
        ids = torch.randint(0, 49408, (3, 77), generator=g)
        want, got = text(ids, output_hidden_states=True), light.text_encoder(ids, output_hidden_states=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got.pooler_output, want.pooler_output)
    assert len(got.hidden_states) == len(want.hidden_states) == 5  # embeddings + 4 layers (clip skip reads them)
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states, strict=True))


def test_tokenizer_ids_equal_transformers(light):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(EMOJI / "tokenizer")
    texts = ["red heart", "a (red:1.2) heart, BREAK blue!!", "Grinning   face\twith big EYES", "café naïve 😀 123 4567",
             "<|endoftext|> hi <|startoftext|>", "don't it's we'll they're", "", "  ", "ÄÖÜ ß ﬁ", "x" * 300,
             "[red:blue:0.5] [cat|dog]", "日本語のテキスト", "a\u00a0b\u200bc"]  # fmt: skip
    for text in texts:
        want = tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        assert light.tokenizer(text, add_special_tokens=False)["input_ids"] == want, text
    ours = light.tokenizer
    assert (ours.model_max_length, ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        tok.model_max_length, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)  # fmt: skip


def test_scheduler_equals_diffusers_dpm_solver(light):
    from diffusers import DPMSolverMultistepScheduler

    ours = type(light.scheduler)
    g = torch.Generator().manual_seed(1)
    base = dict(light.scheduler.config)
    for spacing, karras, steps, pred in itertools.product(
        ("leading", "linspace", "trailing"), (False, True), (1, 2, 7, 20, 31), ("epsilon", "v_prediction")
    ):
        extra = {"final_sigmas_type": "zero"} if pred == "v_prediction" else {}
        cfg = base | {"timestep_spacing": spacing, "prediction_type": pred}
        want = DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=karras, **extra)
        got = ours.from_config(cfg, use_karras_sigmas=karras, **extra)
        want.set_timesteps(steps)
        got.set_timesteps(steps)
        assert torch.equal(got.timesteps, want.timesteps) and torch.equal(got.sigmas, want.sigmas)
        a = b = torch.randn(2, 4, 8, 8, generator=g)
        for t in want.timesteps:
            noise = torch.randn(2, 4, 8, 8, generator=g)
            a = want.step(noise, t, a, return_dict=False)[0]
            b = got.step(noise, t, b)[0]
        assert torch.equal(a, b), (spacing, karras, steps, pred)


def _request(**kw) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "red heart", "seed": 3, "device": "cpu", "steps": 6} | kw))


CASES = {
    "default 20 steps": {"steps": None},
    "batch of 3 in batches of 2": {"n_images": 3, "batch_size": 2, "prompt": "blue heart"},
    "emphasis, negative, BREAK": {"prompt": "(red:1.3) heart BREAK [fire]", "negative": "blue"},
    "prompt editing": {"prompt": "[red heart:rocket:3]"},
    "clip skip 2": {"clip_skip": 2},
    "Karras, 72x64, guidance 1": {"sampler": "DPM++ 2M Karras", "width": 72, "height": 64, "guidance": 1.0},
}


@pytest.mark.parametrize("case", CASES)
def test_images_and_metadata_equal_the_full_pipeline(engines, case):
    light_engine, full_engine = engines
    kw = dict(CASES[case])
    if "negative" in kw:
        kw["negative_prompt"] = kw.pop("negative")
    request = _request(**kw)
    plan = light_engine.plan(request)
    assert light_engine.runs_light(plan) and not full_engine.runs_light(full_engine.plan(request))
    got, want = light_engine.generate(plan), full_engine.generate(request)
    assert light_engine.load(None, "cpu")[0].light and not full_engine.load(None, "cpu")[0].light
    assert len(got.images) == len(want.images) == request.n_images
    for a, b in zip(got.images, want.images, strict=True):
        assert a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
    # Every image's PNG, both metadata chunks included, byte for byte (only the measured times differ).
    for result in (got, want):
        result.timings = replace(result.timings, **dict.fromkeys(vars(result.timings), 0.0))
        result.metadata["timings"] = vars(result.timings)
    for i in range(len(got.images)):
        assert metadata_for(got, i) == metadata_for(want, i)
        assert png_bytes(got, i) == png_bytes(want, i)
    assert got.metadata["scheduler"] == "DPMSolverMultistepScheduler" and got.metadata["optimisation"]["attention"]


def test_light_runs_only_what_it_covers(engines, tiny_models, tmp_path):
    from sdplay import light

    light_engine, _ = engines
    assert light.covers(light_engine.plan(_request()), light_engine.options)
    not_covered = [
        _request(sampler="Euler a"), _request(sampler="DPM++ 2M SDE"), _request(dtype="bf16"),
        _request(hires=HiresFix(scale=2.0)), _request(model=str(tiny_models["sd1"])),
        _request(init_image=light_engine.generate(_request(steps=1)).images[0], strength=0.5),
    ]  # fmt: skip
    for request in not_covered:
        assert not light.covers(light_engine.plan(request), light_engine.options), request
    for options in (LoadOptions(light=True, attention_slicing=True), LoadOptions(light=True, random_weights=True)):
        assert not light.covers(light_engine.plan(_request()), options)
    assert not Engine(LoadOptions()).runs_light(light_engine.plan(_request()))  # the library's default: full


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (("scheduler/scheduler_config.json", {"algorithm_type": "sde-dpmsolver++"}), "algorithm_type"),
        (("unet/config.json", {"upcast_attention": True}), "upcast_attention"),
        (
            ("unet/config.json", {"down_block_types": ["DownBlock2D", "SimpleCrossAttnDownBlock2D", "DownBlock2D"]}),
            "down blocks",
        ),
        (("text_encoder/config.json", {"hidden_act": "gelu"}), "hidden_act"),
        (("model_index.json", {"scheduler": ["diffusers", "PNDMScheduler"]}), "scheduler"),
    ],
)
def test_a_folder_outside_the_light_layout_is_named(tmp_path, edit, reason):
    import shutil

    from sdplay.light.folder import check

    folder = tmp_path / "model"
    shutil.copytree(EMOJI, folder)
    assert check(folder) is None
    path, changes = edit
    config = json.loads((folder / path).read_text()) | changes
    (folder / path).write_text(json.dumps(config))
    assert reason in (check(folder) or "")


def test_the_command_imports_neither_diffusers_nor_transformers(tmp_path):
    probe = (
        "import sys\nfrom sdplay.cli.main import main\nstatus = main(sys.argv[1:])\n"
        "print('loaded:', sorted(m for m in ('diffusers', 'transformers', 'accelerate', 'scipy', 'peft') "
        "if m in sys.modules), 'status:', status)"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(Path.home())}
    args = ["generate", "red heart", "--device", "cpu", "--seed", "0", "--steps", "4", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.stdout.strip().endswith("loaded: [] status: 0"), done.stderr
    image = next(tmp_path.glob("*.png"))
    from sdplay.images import read_png_info

    meta = read_png_info(image)
    assert meta["sdplay"]["versions"]["diffusers"] and meta["sdplay"]["optimisation"]["source"].startswith("folder")
    full = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=600,
                          env=env | {"SDPLAY_LIGHT": "0"})  # fmt: skip
    assert "'diffusers'" in full.stdout and full.stdout.strip().endswith("status: 0"), full.stderr
    a, b = sorted(tmp_path.glob("*.png"))
    assert np.array_equal(np.asarray(_open(a)), np.asarray(_open(b)))


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
