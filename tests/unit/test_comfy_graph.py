"""ComfyUI graph validation and planning, without a server: ComfyUI's error types for each kind of mistake."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sdplay import samplers
from sdplay.server.comfy import graph, nodes, plan
from sdplay.server.comfy.executors import EXECUTORS

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "comfyui" / "open-webui-default-workflow.json"
ENGINE_SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC"]
TABLE = nodes.table(nodes.Choices(checkpoints=["sdplay-emoji"], samplers=ENGINE_SAMPLERS))


def workflow() -> dict:
    wf = json.loads(FIXTURE.read_text())
    wf["4"]["inputs"]["ckpt_name"] = "sdplay-emoji"
    return wf


def refused(wf) -> dict:
    with pytest.raises(graph.PromptRefused) as info:
        graph.check(wf, TABLE)
    return info.value.body()


def test_the_default_workflow_validates_in_dependency_order():
    checked = graph.check(workflow(), TABLE)
    assert checked.outputs == ["9"] and checked.node_errors == {}
    order = checked.order
    assert order[-1] == "9" and order.index("4") < order.index("6") < order.index("3") < order.index("8")
    assert checked.values["3"]["positive"] == ("6", 0) and checked.values["3"]["cfg"] == 8.0


def test_values_are_converted_and_ranges_checked():
    wf = workflow()
    wf["3"]["inputs"].update(steps="12", cfg="3.5")
    values = graph.check(wf, TABLE).values["3"]
    assert values["steps"] == 12 and values["cfg"] == 3.5
    wf["3"]["inputs"]["cfg"] = 31
    err = refused(wf)["node_errors"]["3"]["errors"][0]
    assert err["type"] == "value_bigger_than_max" and err["extra_info"]["input_name"] == "cfg"
    wf["3"]["inputs"]["cfg"] = float("inf")
    assert refused(wf)["node_errors"]["3"]["errors"][0]["type"] == "invalid_input_type"


def test_links_must_name_a_node_and_an_output_of_the_right_type():
    wf = workflow()
    wf["8"]["inputs"]["samples"] = ["99", 0]
    assert refused(wf)["node_errors"]["8"]["errors"][0]["type"] == "bad_linked_input"
    wf["8"]["inputs"]["samples"] = ["3", 5]
    assert refused(wf)["node_errors"]["8"]["errors"][0]["type"] == "bad_linked_input"
    wf["8"]["inputs"]["samples"] = ["3"]
    assert refused(wf)["node_errors"]["8"]["errors"][0]["type"] == "bad_linked_input"


def test_a_long_chain_is_checked_without_recursion_and_a_cycle_is_named():
    chain = {str(i): {"class_type": "VAEDecode", "inputs": {"samples": [str(i + 1), 0], "vae": ["c", 2]}}
             for i in range(1, graph.MAX_NODES - 1)}  # fmt: skip
    chain["0"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
    chain["c"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdplay-emoji"}}
    assert len(chain) == graph.MAX_NODES
    body = refused(chain)  # deep, and wrong: VAEDecode's IMAGE is no LATENT
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "return_type_mismatch"
    cycle = {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
             "2": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["2", 0]}},
             "3": {"class_type": "KSampler", "inputs": {"latent_image": ["3", 0]}}}  # fmt: skip
    body = refused(cycle)
    assert body["error"]["type"] == "invalid_prompt" and "#3 -> #3" in body["error"]["details"]


def test_shapes_that_are_not_a_graph():
    for bad in ([], "x", {}, {"1": []}, {"1": {"inputs": {}}}, {"1": {"class_type": "SaveImage", "inputs": []}}):
        assert refused(bad)["error"]["type"] == "invalid_prompt"


def test_sampler_and_scheduler_names_map_onto_sdplay():
    assert samplers.from_comfy("dpmpp_2m", "karras", ENGINE_SAMPLERS) == "DPM++ 2M Karras"
    assert samplers.from_comfy("euler_ancestral", "simple", ENGINE_SAMPLERS) == "Euler a"
    assert samplers.from_comfy("uni_pc_bh2", "sgm_uniform", ENGINE_SAMPLERS) == "UniPC"
    assert samplers.from_comfy("euler", "karras", ENGINE_SAMPLERS) is None
    assert samplers.from_comfy("euler", "exponential", ENGINE_SAMPLERS) is None
    assert samplers.from_comfy("lcm", "normal", ENGINE_SAMPLERS) is None
    assert samplers.comfy_sampler_names(ENGINE_SAMPLERS) == ["euler", "euler_ancestral", "dpmpp_2m", "ddim", "uni_pc",
                                                         "uni_pc_bh2"]  # fmt: skip
    assert samplers.comfy_schedulers_for("ddim", ENGINE_SAMPLERS) == ["normal", "simple", "sgm_uniform", "ddim_uniform"]
    for spec in samplers.SAMPLERS:  # both directions agree: each sdplay sampler's own ComfyUI pair maps back to it
        if spec.comfy:
            assert samplers.from_comfy(*spec.comfy) == spec.name


def test_planning_turns_each_sampler_into_one_request():
    wf = workflow()
    wf["6"]["inputs"]["text"] = "a cat"
    wf["5"]["inputs"].update(width=100, height=64, batch_size=2)
    wf["3"]["inputs"].update(seed=2**40 + 3, sampler_name="dpmpp_2m", scheduler="karras")
    checked = graph.check(wf, TABLE)
    planned = plan.make_plan(
        wf, checked, plan.Context(ENGINE_SAMPLERS, lambda r: SimpleNamespace(request=r)), EXECUTORS
    )
    [sampling] = planned.samplings
    r = sampling.request
    assert (r.prompt, r.negative_prompt, r.width, r.height, r.n_images) == ("a cat", "", 96, 64, 2)
    assert (r.seed, r.sampler, r.steps, r.guidance, r.model) == (3, "DPM++ 2M Karras", 20, 8.0, "sdplay-emoji")
    assert [(o.node_id, o.folder, o.samplings) for o in planned.outputs] == [("9", "output", [0])]


def test_planning_refuses_what_sdplay_cannot_do():
    wf = workflow()
    wf["3"]["inputs"]["denoise"] = 0.5
    with pytest.raises(graph.PromptRefused) as info:
        plan.make_plan(
            wf, graph.check(wf, TABLE), plan.Context(ENGINE_SAMPLERS, lambda r: SimpleNamespace(request=r)), EXECUTORS
        )
    err = info.value.node_errors["3"]["errors"][0]
    assert err["type"] == "custom_validation_failed" and "denoise 0.5" in err["details"]


def test_embedding_syntax_becomes_the_embeddings_name_and_unknown_ones_are_refused():
    from sdplay.errors import InvalidRequest

    def find(name):
        if name != "easynegative":
            raise InvalidRequest(f"No embedding named {name!r}.", hint="Close ones: easynegative.")

    wf = workflow()
    wf["6"]["inputs"]["text"] = "a cat, (embedding:easynegative.safetensors:1.2), embedding:easynegative"
    context = plan.Context(ENGINE_SAMPLERS, lambda r: SimpleNamespace(request=r), find_embedding=find)
    [sampling] = plan.make_plan(wf, graph.check(wf, TABLE), context, EXECUTORS).samplings
    assert sampling.request.prompt == "a cat, (easynegative:1.2), easynegative"
    wf["6"]["inputs"]["text"] = "a cat, embedding:easynegativ"
    with pytest.raises(graph.PromptRefused) as info:
        plan.make_plan(wf, graph.check(wf, TABLE), context, EXECUTORS)
    assert "Close ones: easynegative" in info.value.node_errors["6"]["errors"][0]["details"]
