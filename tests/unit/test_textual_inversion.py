"""Textual inversion on tiny SD1/SD2/SDXL models: names in the prompt, every file format, isolation, bad files."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny import embedding_vectors, make_embedding

from sdplay.embeddings import EmbeddingLibrary
from sdplay.engine import Engine
from sdplay.errors import InvalidRequest, ModelNotAvailable, UnsafeCheckpoint
from sdplay.images import parameters_for
from sdplay.plan import check_compatible
from sdplay.prompts import Vocab, tokenize
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="module")
def ti_dir(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    for family in FAMILIES:
        make_embedding(tiny_models[family], root / f"zqstyle-{family}.safetensors", scale=3.0)
    make_embedding(tiny_models["sd1"], root / "nested" / "qxmood.safetensors", count=3, seed=4, scale=3.0)
    return root


@pytest.fixture(scope="module")
def tengine(ti_dir):
    return Engine(max_models=3, embeddings_dir=str(ti_dir))


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 3, "seed": 7}
    return GenerationRequest(**(base | kw))


def pixels(result):
    return np.asarray(result.images[0]).astype(np.int16)


def sha10(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_name_changes_the_image_and_leaves_no_trace(tengine, engine, tiny_models, ti_dir, family):
    model, name = tiny_models[family], f"zqstyle-{family}"
    before = tengine.generate(req(model))
    styled = tengine.generate(req(model, prompt=f"a red heart, {name}"))
    after = tengine.generate(req(model))
    assert np.abs(pixels(styled) - pixels(before)).mean() > 1.0
    assert np.array_equal(pixels(after), pixels(before)), "an embedding must not leak into the next request"
    no_folder = engine.generate(req(model))  # an engine without embeddings: the plain prompt's image, bit for bit
    assert np.array_equal(pixels(no_folder), pixels(before))
    emphasised = tengine.generate(req(model, prompt=f"a red heart, ({name}:1.6)"))
    assert not np.array_equal(pixels(emphasised), pixels(styled))
    negative = tengine.generate(req(model, negative_prompt=name))
    assert not np.array_equal(pixels(negative), pixels(before))
    digest = sha10(ti_dir / f"{name}.safetensors")
    assert styled.metadata["embeddings"] == [{"name": name, "hash": digest, "file": f"{name}.safetensors"}]
    assert f'TI hashes: "{name}: {digest}"' in parameters_for(styled, 0)
    assert "TI hashes" not in parameters_for(before, 0)


def test_formats_a1111_diffusers_and_emb_params_give_the_same_vectors(tiny_models, tmp_path):
    model = tiny_models["sd1"]
    make_embedding(model, tmp_path / "safe.safetensors", count=1, scale=3.0)
    make_embedding(model, tmp_path / "legacy.pt", count=1, scale=3.0, fmt="a1111")
    make_embedding(model, tmp_path / "concept.bin", count=1, scale=3.0, fmt="diffusers")
    refusing = Engine(embeddings_dir=str(tmp_path))
    with pytest.raises(UnsafeCheckpoint, match="pickle") as err:
        refusing.generate(req(model, prompt="a red heart legacy"))
    assert "--allow-pickle" in str(err.value)
    allowing = Engine(embeddings_dir=str(tmp_path), allow_pickle=True)
    images = [pixels(allowing.generate(req(model, prompt=f"a red heart {n}"))) for n in ("safe", "legacy", "concept")]
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    listing = allowing.embeddings(str(model))
    assert listing["loaded"]["legacy"] == {"step": 500, "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "tiny",
                                           "shape": 32, "vectors": 1}  # fmt: skip
    assert "legacy" in refusing.embeddings(str(model))["skipped"]


def test_sdxl_file_gives_each_encoder_its_vectors(tiny_models, tmp_path):
    model = tiny_models["sdxl"]
    clip_l, clip_g = embedding_vectors(model, 2, seed=3, scale=3.0)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "both.safetensors"))
    save_file({"clip_l": clip_l, "clip_g": torch.zeros_like(clip_g)}, str(tmp_path / "lonly.safetensors"))
    eng = Engine(embeddings_dir=str(tmp_path))
    both = pixels(eng.generate(req(model, prompt="a red heart both")))
    l_only = pixels(eng.generate(req(model, prompt="a red heart lonly")))
    assert not np.array_equal(both, l_only), "clip_g's vectors must reach the second encoder"
    assert eng.embeddings(str(model))["loaded"]["both"]["shape"] == clip_l.shape[1] + clip_g.shape[1]


def test_names_are_found_in_editing_and_as_a1111_tokens(tengine, tiny_models):
    model = tiny_models["sd1"]
    plan = tengine.plan(req(model, prompt="a red heart [zqstyle-sd1:plain:2] and (qxmood)"))
    assert [f.name for f in plan.embeddings] == ["zqstyle-sd1", "qxmood"]
    assert tengine.plan(req(model, prompt="zqstyle sd1 qxmoods")).embeddings == ()  # other tokens: not the names
    assert tengine.plan(req(model, prompt="a red heart")).embeddings == ()


def test_an_embedding_that_does_not_fit_the_chunk_starts_the_next(tiny_models):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_models["sd1"] / "tokenizer")
    vocab = Vocab.build(tok, {"qxmood": 3})
    tokens = tokenize(tok, "word " * 73 + "qxmood", vocab)
    assert len(tokens.ids) == 2 and tokens.fixes == [[], [(1, "qxmood")]]
    assert tokens.ids[1][1:4] == [0, 0, 0]
    emphasised = tokenize(tok, "(qxmood:1.3) x", vocab)
    assert emphasised.weights[0][1:4] == [1.3, 1.3, 1.3] and emphasised.fixes == [[(1, "qxmood")]]


def test_plans_with_other_embeddings_never_share_a_batch(tengine, tiny_models):
    model = tiny_models["sd1"]
    plain, styled = tengine.plan(req(model)), tengine.plan(req(model, prompt="zqstyle-sd1"))
    assert plain.batch_key != styled.batch_key
    with pytest.raises(InvalidRequest, match="embeddings"):
        check_compatible([plain, styled])


def test_wrong_family_and_bad_files_get_clear_errors(tengine, tiny_models, ti_dir, tmp_path):
    with pytest.raises(InvalidRequest, match="is for SDXL models"):
        tengine.generate(req(tiny_models["sd1"], prompt="x zqstyle-sdxl"))
    with pytest.raises(InvalidRequest, match="is for a text encoder 32 wide; this model is Stable Diffusion XL"):
        tengine.generate(req(tiny_models["sdxl"], prompt="x zqstyle-sd1"))
    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "wide.safetensors"))
    save_file({"emb_params": torch.tensor([[float("nan")] * 32])}, str(tmp_path / "nan.safetensors"))
    save_file({"a": torch.randn(1, 32), "b": torch.randn(1, 32)}, str(tmp_path / "two.safetensors"))
    data = (ti_dir / "zqstyle-sd1.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    eng = Engine(embeddings_dir=str(tmp_path))
    model = tiny_models["sd1"]
    with pytest.raises(InvalidRequest, match=r"is for SD 1\.x models"):
        eng.generate(req(model, prompt="x wide"))
    for name, message in (("nan", "NaN"), ("two", "2 terms"), ("cut", "cannot be read")):
        with pytest.raises(ModelNotAvailable, match=message):
            eng.generate(req(model, prompt=f"x {name}"))
    with pytest.raises(InvalidRequest, match=r"Close ones: .*zqstyle-sd1"):
        tengine.embedding_library.get("zqstyle-sd")
    with pytest.raises(InvalidRequest, match="names are file names"):
        tengine.embedding_library.get("../zqstyle-sd1")
    assert np.array_equal(pixels(eng.generate(req(model))), pixels(tengine.generate(req(model))))


def test_new_files_are_seen_and_vectors_are_read_once(tiny_models, tmp_path):
    lib = EmbeddingLibrary(tmp_path)
    assert lib.used(["a zqstyle"]) == ()
    file = make_embedding(tiny_models["sd1"], tmp_path / "zqstyle.safetensors")
    assert [f.name for f in lib.used(["a zqstyle"])] == ["zqstyle"]  # the folder changed: read again
    first = lib.load(lib.files()["zqstyle"])
    assert lib.load(lib.files()["zqstyle"]) is first
    assert file.is_file()


def test_graphed_text_encoders_run_eagerly_for_embeddings_only(tiny_models, ti_dir):
    from sdplay.accel.fastgraphs import eager_recorder
    from sdplay.accel.fastpath import FastConfig, accelerate

    model, prompt = tiny_models["sdxl"], "a red heart zqstyle-sdxl"
    reference = Engine(embeddings_dir=str(ti_dir)).generate(req(model, prompt=prompt))
    fast_engine = Engine(fast=False, embeddings_dir=str(ti_dir))
    loaded, _ = fast_engine.load(str(model))
    accelerate(
        loaded.pipe, loaded.device, FastConfig(backend="eager", compile="none", text="graph"), recorder=eager_recorder
    )
    styled = fast_engine.generate(req(model, prompt=prompt))
    stats = loaded.pipe.sdplay_fast.stats()
    assert stats["text_encoder"]["eager_calls"] >= 1 and stats["text_encoder_2"]["eager_calls"] >= 1
    fast_engine.generate(req(model))
    assert loaded.pipe.sdplay_fast.stats()["text_encoder"]["replays"] >= 1  # plain prompts keep their graphs
    assert np.abs(pixels(styled) - pixels(reference)).max() <= 1
