"""The Jupyter playground: widget callbacks driven from code on the real engine; the example notebook run headless."""

from __future__ import annotations

import datetime
import io
import time
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets", reason="pip install 'sdplay[ui]'")

from PIL import Image

from sdplay.notebook import Playground

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "playground.ipynb"


@pytest.fixture(scope="module")
def playground_engine(small):
    return small


def _grid_images(pg: Playground) -> list[tuple[Image.Image, str]]:
    """(decoded image, caption) of every cell of the grid widget."""
    cells = []
    for cell in pg.grid.children:
        picture, caption = cell.children
        cells.append((Image.open(io.BytesIO(picture.value)), caption.value))
    return cells


def test_generate_button_fills_the_grid_without_blocking(playground_engine):
    engine, model = playground_engine
    pg = Playground(engine, model=model)
    assert pg.model.value == model
    pg.prompt.value = "a red heart"
    pg.n_images.value = 2
    pg.steps.value = 3
    pg.seed.value = 7
    steps_seen = set()
    pg.progress.observe(lambda change: steps_seen.add(change["new"]), names="value")
    pg.generate_button.click()
    assert pg.running and pg.generate_button.disabled  # the click returned while the engine works in its thread
    result = pg.wait(timeout=120)
    assert result is not None, pg.status.value
    cells = _grid_images(pg)
    assert [caption for _, caption in cells] == ["seed 7", "seed 8"]
    assert all(img.size == (result.request.width, result.request.height) for img, _ in cells)
    assert {1, 2, 3} <= steps_seen and pg.progress.value == pg.progress.max == 3
    assert "2 image(s)" in pg.status.value and not pg.generate_button.disabled


def test_failure_shows_a_message_and_keeps_the_form(playground_engine):
    engine, model = playground_engine
    pg = Playground(engine, model=model)
    long_prompt = "heart " * 2000  # over the 10,000-character limit
    pg.prompt.value = long_prompt
    pg.n_images.value = 3
    pg.generate_button.click()
    assert pg.wait(timeout=60) is None
    assert pg.error is not None and pg.error.field == "prompt"
    assert "Failed (prompt)" in pg.status.value and "10,000" in pg.status.value
    assert "sdplay-invalid" in pg.prompt._dom_classes
    assert pg.prompt.value == long_prompt and pg.n_images.value == 3 and pg.model.value == model
    assert not pg.generate_button.disabled and pg.grid.children == ()

    pg.prompt.value = "a red heart"  # the next run clears the mark
    pg.steps.value = 1
    pg.generate_button.click()
    assert pg.wait(timeout=120) is not None, pg.status.value
    assert "sdplay-invalid" not in pg.prompt._dom_classes


def test_cancel_stops_a_long_run(playground_engine):
    engine, model = playground_engine
    pg = Playground(engine, model=model)
    pg.prompt.value = "a long run"
    pg.steps.value = 150
    pg.generate_button.click()
    deadline = time.monotonic() + 60
    while pg.progress.value < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    pg.cancel_button.click()
    assert pg.wait(timeout=60) is None
    assert "Cancelled" in pg.status.value and pg.progress.value < 150
    assert pg.prompt.value == "a long run" and not pg.generate_button.disabled


def test_unknown_model_names_are_offered_as_given(playground_engine, tmp_path):
    engine, _ = playground_engine
    pg = Playground(engine, model=str(tmp_path))
    assert pg.model.value == str(tmp_path) and pg.model.options[0] == (str(tmp_path), str(tmp_path))
    labels = {value: label for label, value in pg.model.options}
    for info in engine.models():
        assert labels[info.name].endswith("(weights not here)") == (not info.available)


@pytest.mark.slow
def test_example_notebook_runs_top_to_bottom(small, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    engine, model = small
    folder = getattr(engine, "folder", None)  # the tiny test model until the embedded weights are installed
    monkeypatch.setenv("SDPLAY_NOTEBOOK_MODEL", str(folder) if folder else model)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    widget_views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_views, "the playground widget was not displayed"
    assert len(list((tmp_path / "outputs" / "playground").glob("*.png"))) == 2
    assert any("[42, 43]" in o.get("data", {}).get("text/plain", "") for o in outputs)


def test_uploaded_image_and_strength_make_an_image_to_image_run(playground_engine):
    engine, model = playground_engine
    pg = Playground(engine, model=model)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    data = buf.getvalue()
    now = datetime.datetime.now(datetime.UTC)
    pg.init_image.value = ({"name": "in.png", "type": "image/png", "size": len(data), "content": memoryview(data),
                            "last_modified": now},)  # fmt: skip
    pg.prompt.value, pg.steps.value, pg.seed.value, pg.strength.value = "a red heart", 4, 1, 0.5
    request = pg.request()
    assert request.task == "img2img" and request.strength == 0.5 and request.init_image.size == (64, 48)
    pg.generate_button.click()
    result = pg.wait(timeout=120)
    assert result is not None, pg.status.value
    assert _grid_images(pg)[0][0].size == (64, 48)
    pg.init_image.value = ({"name": "bad.png", "type": "image/png", "size": 3, "content": memoryview(b"abc"),
                            "last_modified": now},)  # fmt: skip
    assert pg.generate() is None and "not a PNG, JPEG or WebP" in pg.status.value


def test_lora_dropdown_adds_and_removes_the_tag_and_the_run_applies_it(small, tmp_path):
    from small_model import with_lora_folder

    engine, model = small
    loras = tmp_path / "Lora"
    pg = Playground(with_lora_folder(engine, model, loras, ("inkwash",)), model=model)
    assert [value for _, value in pg.lora.options] == ["", "inkwash"] and not pg.lora.disabled
    pg.prompt.value = "a red heart"
    pg.lora.value = "inkwash"
    assert pg.prompt.value == "a red heart <lora:inkwash:1>" and pg.lora.value == ""
    pg.lora.value = "inkwash"  # chosen again: taken out, whatever its weight
    assert pg.prompt.value == "a red heart"
    pg.prompt.value = "<lora:inkwash:0.4> a red heart"
    pg.lora.value = "inkwash"
    assert pg.prompt.value == "a red heart"

    (loras / "inkwash.safetensors").rename(loras / "renamed.safetensors")
    pg.lora_refresh.click()
    assert [value for _, value in pg.lora.options] == ["", "renamed"]
    pg.lora.value = "renamed"
    pg.steps.value, pg.seed.value = 2, 3
    pg.generate_button.click()
    result = pg.wait(timeout=120)
    assert result is not None, pg.status.value
    assert "renamed" in result.metadata["lora_hashes"]


def test_no_lora_folder_disables_the_dropdown(small, tmp_path):
    from sdplay.engine import Engine

    pg = Playground(Engine(lora_dir=str(tmp_path / "missing")), model=small[1])
    assert pg.lora.disabled and pg.lora.options == ((f"No LoRA files in {tmp_path / 'missing'}", ""),)
