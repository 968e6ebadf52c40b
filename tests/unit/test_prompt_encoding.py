"""A1111 prompt syntax through the encoders of tiny SD1/SD2/SDXL models: weights, BREAK, editing, batching."""

import numpy as np
import pytest
import torch

from sdplay.prompts import apply_emphasis, encode, tokenize
from sdplay.types import GenerationRequest

FAMILIES = ("sd1", "sd2", "sdxl")


def req(model, **kw):
    base = {"prompt": "a red heart", "model": str(model), "width": 64, "height": 64, "steps": 4, "seed": 7}
    return GenerationRequest(**(base | kw))


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


def loaded(engine, tiny_models, family):
    model = engine.load(str(tiny_models[family]))[0]
    return model.pipe, model.family_spec


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_prompt_encodes_exactly_as_diffusers(engine, tiny_models, family):
    pipe, fam = loaded(engine, tiny_models, family)
    with torch.inference_mode():
        ours = encode(pipe, fam, ["a red heart, on a table"], ["ugly"], steps=20)
        ref = pipe.encode_prompt("a red heart, on a table", device="cpu", num_images_per_prompt=1,
                                 do_classifier_free_guidance=True, negative_prompt="ugly")  # fmt: skip
    assert not ours.schedule
    assert torch.equal(ours.prompt, ref[0]) and torch.equal(ours.negative, ref[1])
    if family == "sdxl":
        assert torch.equal(ours.pooled, ref[2]) and torch.equal(ours.negative_pooled, ref[3])


def test_emphasis_scales_tokens_and_keeps_the_mean(engine, tiny_models):
    pipe, fam = loaded(engine, tiny_models, "sd1")
    tokens = tokenize(pipe.tokenizer, "a (red:1.5) [heart]")
    assert tokens.weights[0][:5] == [1.0, 1.0, 1.5, pytest.approx(1 / 1.1), 1.0]
    hidden = torch.randn(2, 77, 8)
    weights = torch.ones(2, 77)
    weights[0, 2] = 1.5
    out = apply_emphasis(hidden, weights)
    assert torch.allclose(out.mean(dim=(1, 2)), hidden.mean(dim=(1, 2)), atol=1e-6)
    assert torch.equal(out[1], hidden[1]), "rows without emphasis are untouched"
    with torch.inference_mode():
        plain = encode(pipe, fam, ["a red heart"], [""]).prompt
        strong = encode(pipe, fam, ["a (red:1.5) heart"], [""]).prompt
        neutral = encode(pipe, fam, ["a (red:1.0) heart"], [""]).prompt
    assert torch.equal(plain, neutral)
    assert not torch.equal(plain, strong)


def test_break_starts_a_new_chunk(engine, tiny_models):
    pipe, fam = loaded(engine, tiny_models, "sd1")
    tok = pipe.tokenizer
    ids = tokenize(tok, "a red heart BREAK blue").ids
    assert len(ids) == 2
    assert ids[1][1] == tok("blue", add_special_tokens=False)["input_ids"][0]
    assert tokenize(tok, "word " * 80).ids[1][1:6] == tok("word " * 5, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        emb = encode(pipe, fam, ["a red heart BREAK blue"], ["BREAK x BREAK y"])
    assert emb.chunks == 3 and emb.prompt.shape[1] == 3 * 77


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_editing_switches_conditioning_during_the_steps(engine, tiny_models, family):
    model = tiny_models[family]
    red = engine.generate(req(model, prompt="a red heart"))
    blue = engine.generate(req(model, prompt="a blue heart"))
    edited = engine.generate(req(model, prompt="a [red:blue:1] heart"))
    never = engine.generate(req(model, prompt="a [red:blue:9] heart"))  # past the last step: red throughout
    assert np.array_equal(pixels(never), pixels(red))
    assert not np.array_equal(pixels(edited), pixels(red))  # steps 0-1 red, steps 2-3 blue
    assert not np.array_equal(pixels(edited), pixels(blue))


def test_alternation_and_negative_editing(engine, tiny_models):
    model = tiny_models["sd1"]
    a = engine.generate(req(model, prompt="a [red|blue] heart"))
    b = engine.generate(req(model, prompt="a red heart"))
    c = engine.generate(req(model, negative_prompt="[ugly:blurry:0.5]"))
    d = engine.generate(req(model, negative_prompt="ugly"))
    assert not np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(c), pixels(d))


def test_editing_schedule_counts_steps_as_a1111(engine, tiny_models):
    pipe, fam = loaded(engine, tiny_models, "sd1")
    with torch.inference_mode():
        emb = encode(pipe, fam, ["a [red:blue:2] heart", "plain"], ["", "[x::0.5]"], steps=10)
    assert [last for last, _ in emb.schedule] == [2, 5, 10]
    assert emb.at(0) is emb.at(2) is emb.schedule[0][1]
    assert emb.at(3) is emb.schedule[1][1] and emb.at(9) is emb.schedule[2][1]
    assert torch.equal(emb.at(9).prompt[1], emb.at(0).prompt[1]), "the plain row keeps its conditioning"


def test_weighted_and_edited_requests_batch_with_plain_ones(engine, tiny_models):
    model = tiny_models["sd1"]
    plain = req(model, prompt="a red heart")
    fancy = req(model, prompt="a ((blue)) [heart:star:2]", seed=9)
    together = engine.generate_batch([plain, fancy])
    assert np.abs(pixels(together[0]) - pixels(engine.generate(plain))).max() <= 1
    assert np.abs(pixels(together[1]) - pixels(engine.generate(fancy))).max() <= 1


def test_more_weight_on_red_is_redder_with_the_embedded_model(engine):
    def redness(result):
        a = np.stack([np.asarray(i).astype(float) for i in result.images])
        return (a[..., 0] - a[..., 1:].mean(-1)).mean()

    # The shipped emoji model reads a prompt mostly from its end-of-text state (its text encoder is trained to name
    # the emoji there), so emphasis, which scales the word's own state, moves its pictures only a little. Measured
    # (2 images, 10 steps, seed 1) for weights 0, 1, 2, 3: "a (red:w) car" 46.0, 46.5, 46.8, 47.7; "... square"
    # 155.0, 155.4, 155.8, 156.2. Ignored or inverted weights give equal or falling scores.
    scores = [redness(engine.generate(GenerationRequest(prompt=f"a (red:{w}) car", seed=1, n_images=2, steps=10)))
              for w in (0, 1, 2, 3)]  # fmt: skip
    assert scores == sorted(scores) and len(set(scores)) == len(scores), scores  # strictly increasing
    assert scores[-1] - scores[0] > 0.5, scores


@pytest.mark.parametrize("family", ("sd1", "sdxl"))
def test_clip_skip_2_uses_an_earlier_layer(engine, tiny_models, family):
    pipe, fam = loaded(engine, tiny_models, family)
    with torch.inference_mode():
        one = encode(pipe, fam, ["a red heart"], ["ugly"], clip_skip=1)
        two = encode(pipe, fam, ["a red heart"], ["ugly"], clip_skip=2)
    assert one.prompt.shape == two.prompt.shape
    assert not torch.equal(one.prompt, two.prompt)
    if family == "sdxl":
        assert torch.equal(one.pooled, two.pooled), "the pooled embedding is the final one either way"
