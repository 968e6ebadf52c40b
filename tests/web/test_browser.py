"""The browser UI end to end: real headless Chromium, real sdplay app on loopback, real engine on a small model."""

from __future__ import annotations

import re

import httpx
import pytest
from live import wait_job

pytestmark = [pytest.mark.web, pytest.mark.server]

# Records every text the progress line showed and every preview image, as they happen.
WATCH = """
window.__seen = { progress: [], previews: 0 };
document.addEventListener("DOMContentLoaded", () => {
  const text = document.getElementById("progress-text");
  new MutationObserver(() => window.__seen.progress.push(text.textContent))
    .observe(text, { childList: true, characterData: true, subtree: true });
  const img = document.getElementById("preview-img");
  new MutationObserver(() => { if (img.src.startsWith("data:image/png")) window.__seen.previews += 1; })
    .observe(img, { attributes: true, attributeFilter: ["src"] });
});
"""


def open_app(page, hash_: str = "") -> None:
    page.add_init_script(WATCH)
    page.goto("/" + hash_)
    page.wait_for_selector("body[data-ready]")


def api(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


def test_generate_two_images_with_progress_then_find_them_in_the_gallery(page, server, shots):
    from playwright.sync_api import expect

    open_app(page)
    page.fill("#prompt", "a red heart, first test")
    page.fill("#n_images", "2")
    page.fill("#steps", "8")
    page.fill("#seed", "1234")
    page.press("#prompt", "Control+Enter")  # the keyboard shortcut generates
    expect(page.locator("#generate")).to_be_disabled()
    cards = page.locator("#results .result")
    expect(cards).to_have_count(2, timeout=120_000)
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"^Done: 2 image\(s\)"))

    seen = page.evaluate("window.__seen")
    steps = [t for t in seen["progress"] if re.fullmatch(r"Step \d+/8", t)]
    assert steps, f"live step progress was not shown: {seen['progress']}"
    assert seen["previews"] >= 1, "no preview image was shown while the job ran"
    expect(cards.locator(".seed")).to_have_text(["seed 1234", "seed 1235"])
    widths = cards.locator("img").evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    with api(server) as client:
        job = client.get("/api/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert [img["seed"] for img in job["images"]] == [1234, 1235]
    assert widths == [job["width"], job["width"]] and job["width"] > 0
    shots(page, "generate")

    # the full-size viewer: parameters and a download link to the PNG
    cards.first.locator(".thumb").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(page.locator("#viewer-params")).to_contain_text("a red heart, first test")
    expect(page.locator("#viewer-params")).to_contain_text("1234")
    expect(page.locator("#viewer-download")).to_have_attribute("download", "sdplay-1234.png")
    shots(page, "viewer", full_page=False)
    href = page.locator("#viewer-download").get_attribute("href")
    assert httpx.get(href if href.startswith("http") else server.url + href).content[:8] == b"\x89PNG\r\n\x1a\n"
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # reload: the images are in the gallery
    page.reload()
    page.wait_for_selector("body[data-ready]")
    page.click("nav a[data-page=gallery]")
    page.fill("#gallery-q", "first test")
    page.click("#gallery-form button[type=submit]")
    items = page.locator("#gallery-grid .gallery-item")
    expect(items).to_have_count(2)
    assert sorted(items.evaluate_all("els => els.map(e => Number(e.dataset.seed))")) == [1234, 1235]
    shots(page, "gallery")


def test_gallery_reuse_settings_and_delete(page, server):
    from playwright.sync_api import expect

    with api(server) as client:
        body = {"prompt": "blue star for reuse", "n_images": 1, "steps": 2, "seed": 77, "model": server.model}
        job = wait_job(client, client.post("/api/v1/jobs", json=body).json()["id"], timeout=90)
        assert job["status"] == "done", job
        image_id = job["images"][0]["gallery_id"]

        open_app(page, "#gallery")
        page.fill("#gallery-q", "blue star for reuse")
        page.press("#gallery-q", "Enter")
        item = page.locator("#gallery-grid .gallery-item")
        expect(item).to_have_count(1)
        item.get_by_role("button", name="Reuse", exact=True).click()
        expect(page).to_have_url(re.compile("#generate$"))
        expect(page.locator("#prompt")).to_have_value("blue star for reuse")
        expect(page.locator("#seed")).to_have_value("77")
        expect(page.locator("#steps")).to_have_value("2")

        page.click("nav a[data-page=gallery]")
        page.fill("#gallery-q", "blue star for reuse")
        page.press("#gallery-q", "Enter")
        delete = page.locator("#gallery-grid .gallery-item .actions button.danger")
        delete.click()
        expect(delete).to_have_text("Confirm delete")
        delete.click()
        expect(page.locator("#gallery-grid .gallery-item")).to_have_count(0)
        expect(page.locator("#gallery-count")).to_contain_text("No images")
        assert client.get(f"/api/v1/gallery/{image_id}").status_code == 404


def test_cancel_a_long_job_keeps_the_form(page, server, shots):
    from playwright.sync_api import expect

    open_app(page)
    page.fill("#prompt", "a very long job")
    page.fill("#steps", "150")
    page.click("#generate")
    page.wait_for_function("document.getElementById('progress-text').textContent.startsWith('Step ')", timeout=90_000)
    expect(page.locator("#cancel")).to_be_enabled()
    shots(page, "running")
    page.click("#cancel")
    expect(page.locator("#progress-text")).to_have_text("Cancelled.", timeout=60_000)
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#prompt")).to_have_value("a very long job")
    expect(page.locator("#steps")).to_have_value("150")
    with api(server) as client:
        job = client.get("/api/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert job["status"] == "cancelled" and job["request"]["prompt"] == "a very long job"
    assert job["images"] == []


def test_validation_errors_appear_next_to_their_field(page, server, shots):
    from playwright.sync_api import expect

    with api(server) as client:
        before = len(client.get("/api/v1/jobs").json()["jobs"])
    open_app(page)
    page.fill("#prompt", "keep this prompt")
    page.fill("#steps", "999")
    page.click("#generate")
    steps_error = page.locator('#gen-form .field[data-fields~="steps"] .error')
    expect(steps_error).to_contain_text("150")
    expect(page.locator("#steps")).to_have_attribute("aria-invalid", "true")
    shots(page, "validation")
    page.fill("#steps", "4")  # typing clears the error
    expect(steps_error).to_be_empty()

    page.select_option("#size", "custom")
    page.fill("input[name=width]", "100")
    page.click("#generate")
    expect(page.locator('#gen-form .field[data-fields~="width"] .error')).to_contain_text("multiple of 8")
    expect(page.locator("#prompt")).to_have_value("keep this prompt")
    expect(page.locator("#generate")).to_be_enabled()
    with api(server) as client:
        assert len(client.get("/api/v1/jobs").json()["jobs"]) == before


def test_model_picker_and_no_request_leaves_the_server(page, server):
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    open_app(page)
    with api(server) as client:
        models = client.get("/api/v1/models").json()
    options = page.locator("#model option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
    assert [value for value, _ in options] == [m["name"] for m in models["models"]]
    for (_, label), model in zip(options, models["models"], strict=True):
        assert ("weights not here" in label) == (not model.get("usable", model["available"]))
    assert page.input_value("#model") == models["default"] == server.model
    assert page.locator("#size option").first.text_content().endswith("(native)")
    bad = [u for u in requests if not u.startswith((server.url, "data:", "blob:"))]
    assert not bad, f"the page fetched from outside the server: {bad}"


def test_device_page_shows_live_utilisation_and_memory(page, server, shots):
    from playwright.sync_api import expect

    open_app(page, "#device")
    card = page.locator('.device-card[data-device="cpu"]')
    expect(card.locator('[data-value="util"]')).to_have_text(re.compile(r"^\d+ %$"), timeout=15_000)
    expect(card.locator('[data-value="memory"]')).to_have_text(re.compile(r"^\d+\.\d / \d+\.\d GiB$"))
    page.wait_for_timeout(2500)  # a few more samples for the charts
    expect(page.locator("#system-info")).to_contain_text("cpu")
    shots(page, "device")


def test_phone_width_stacks_the_form_above_the_results(page, server, shots):
    page.set_viewport_size({"width": 390, "height": 844})
    open_app(page)
    form = page.locator("#gen-form").bounding_box()
    output = page.locator(".output").bounding_box()
    assert form["width"] <= 390 and output["y"] >= form["y"] + form["height"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shots(page, "phone")


def test_a_model_without_weights_is_refused_next_to_the_model_picker(page, server):
    from playwright.sync_api import expect

    with api(server) as client:
        models = client.get("/api/v1/models").json()["models"]
    missing = [m["name"] for m in models if not m.get("usable", m["available"])]
    if not missing:
        pytest.skip("every catalog model has its weights on this machine")
    open_app(page)
    page.select_option("#model", missing[0])
    expect(page.locator("#model-note")).to_contain_text("Not on this machine")
    page.fill("#prompt", "anything")
    page.click("#generate")
    expect(page.locator('#gen-form .field[data-fields~="model"] .error')).to_contain_text(missing[0])
    expect(page.locator("#prompt")).to_have_value("anything")


def test_a_server_with_an_api_key_asks_for_it_once(browser, small, tmp_path):
    from harness import live_server
    from playwright.sync_api import expect

    engine, model = small
    with live_server(tmp_path, engine, model, api_key="s3cret") as keyed:
        context = browser.new_context(base_url=keyed.url)
        try:
            page = context.new_page()
            page.goto("/")
            expect(page.locator("#auth")).to_be_visible()
            expect(page.locator("#auth-message")).to_contain_text("API key")
            page.fill("#api-key", "s3cret")
            page.click("#auth button")
            page.wait_for_selector("body[data-ready]")
            page.fill("#prompt", "behind a key")
            page.fill("#steps", "2")
            page.click("#generate")
            image = page.locator("#results .result img")
            expect(image).to_have_count(1, timeout=90_000)
            page.wait_for_function("document.querySelector('#results .result img').naturalWidth > 0")
            assert image.get_attribute("src").startswith("blob:")  # fetched with the key, not a bare URL
        finally:
            context.close()
