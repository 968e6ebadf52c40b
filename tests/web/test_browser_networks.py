"""LoRAs and embeddings in the browser UI, and Ctrl+Up/Down emphasis in the prompt boxes: real Chromium, the real
app on loopback over the real engine with a LoRA folder holding kohya-format LoRA files."""

from __future__ import annotations

import io
import re
import shutil

import httpx
import pytest
from harness import browser_page, live_server
from PIL import Image
from small_model import with_lora_folder

pytestmark = [pytest.mark.web, pytest.mark.server]


@pytest.fixture(scope="module")
def lora_server(small, tmp_path_factory):
    """(server, LoRA folder): the small model's engine again, with two real LoRA files in its LoRA folder."""
    engine, model = small
    root = tmp_path_factory.mktemp("web-loras")
    loras = root / "Lora"
    own = with_lora_folder(engine, model, loras, ("inkwash", "pastel_dream"))
    with live_server(root, own, model, lora_dir=loras) as live:
        yield live, loras


@pytest.fixture
def lpage(browser, lora_server):
    server, _ = lora_server
    with browser_page(browser, server.url) as page:
        yield page


def open_networks(page) -> None:
    page.goto("/")
    page.wait_for_selector("body[data-networks]")
    page.click("#networks summary")


def lora_card(page, name: str):
    return page.get_by_role("button", name=f"LoRA {name}", exact=True)


def set_selection(page, selector: str, start: int, end: int) -> None:
    page.focus(selector)
    page.evaluate("([sel, s, e]) => document.querySelector(sel).setSelectionRange(s, e)", [selector, start, end])


def selection(page, selector: str) -> tuple[str, str]:
    """(value, selected text) of a textarea."""
    script = (
        "s => { const t = document.querySelector(s); "
        "return [t.value, t.value.slice(t.selectionStart, t.selectionEnd)] }"
    )
    return tuple(page.evaluate(script, selector))


def test_lora_cards_insert_and_remove_the_tag_and_the_server_applies_it(lpage, lora_server, shots):
    from playwright.sync_api import expect

    server, _ = lora_server
    page = lpage
    open_networks(page)
    cards = page.locator("#panel-loras .network-card")
    expect(cards).to_have_count(2)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        listed = [x["name"] for x in client.get("/sdapi/v1/loras").json()]
    assert cards.locator(".name").all_text_contents() == listed == ["inkwash", "pastel_dream"]
    expect(page.locator("#tab-loras .count")).to_have_text("(2)")

    # at the caret of the prompt, with a space on either side
    page.fill("#prompt", "a red heart")
    set_selection(page, "#prompt", 5, 5)
    lora_card(page, "inkwash").click()
    expect(page.locator("#prompt")).to_have_value("a red <lora:inkwash:1> heart")
    expect(lora_card(page, "inkwash")).to_have_attribute("aria-pressed", "true")
    expect(lora_card(page, "pastel_dream")).to_have_attribute("aria-pressed", "false")
    shots(page, "networks-lora")
    # a second click takes it out again, whatever its multiplier has become
    page.fill("#prompt", "a red <lora:inkwash:0.6> heart")
    lora_card(page, "inkwash").click()
    expect(page.locator("#prompt")).to_have_value("a red heart")
    expect(lora_card(page, "inkwash")).to_have_attribute("aria-pressed", "false")
    # with the negative prompt in use, a LoRA still goes into the prompt (its tags work there only)
    page.fill("#negative_prompt", "blurry")
    page.click("#negative_prompt")
    lora_card(page, "inkwash").click()
    expect(page.locator("#prompt")).to_have_value("a red <lora:inkwash:1> heart")  # where the last edit left the caret
    expect(page.locator("#negative_prompt")).to_have_value("blurry")

    # the prompt as the card left it reaches the engine: the image's infotext names the LoRA's hash
    page.fill("#negative_prompt", "")
    page.fill("#steps", "2")
    page.fill("#seed", "5")
    page.click("#generate")
    expect(page.locator("#results .result")).to_have_count(1, timeout=180_000)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job = client.get("/api/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        assert job["status"] == "done" and job["request"]["prompt"] == "a red <lora:inkwash:1> heart"
        png = client.get(job["images"][0]["url"]).content
    parameters = Image.open(io.BytesIO(png)).text["parameters"]
    assert "Lora hashes: " in parameters and "inkwash: " in parameters, parameters


def test_filter_and_refresh(lpage, lora_server):
    from playwright.sync_api import expect

    _, loras = lora_server
    page = lpage
    open_networks(page)
    cards = page.locator("#panel-loras .network-card:visible")
    expect(cards).to_have_count(2)
    page.fill("#networks-filter", "PASTEL")  # case-insensitive, part of the name
    expect(cards.locator(".name")).to_have_text(["pastel_dream"])
    page.fill("#networks-filter", "nothing-like-this")
    expect(cards).to_have_count(0)
    expect(page.locator("#panel-loras .empty")).to_have_text("Nothing matches “nothing-like-this”.")
    page.fill("#networks-filter", "")
    expect(cards).to_have_count(2)

    shutil.copy(loras / "inkwash.safetensors", loras / "added_later.safetensors")
    try:
        expect(cards).to_have_count(2)  # the page shows what it read until Refresh
        page.click("#networks-refresh")
        expect(cards.locator(".name")).to_have_text(["added_later", "inkwash", "pastel_dream"])
        expect(page.locator("#tab-loras .count")).to_have_text("(3)")
        page.fill("#networks-filter", "ink")
        expect(cards.locator(".name")).to_have_text(["inkwash"])
    finally:
        (loras / "added_later.safetensors").unlink()
        httpx.post(f"{lora_server[0].url}/sdapi/v1/refresh-loras", timeout=30)


# (text, selection or caret, key, expected text, expected selected text): A1111's Ctrl+Up/Down behaviour
EMPHASIS = [
    ("a red cat", "red", "ArrowUp", "a (red:1.1) cat", "red"),
    ("a red cat", "red", "ArrowDown", "a (red:0.9) cat", "red"),
    ("a red cat", "red cat", "ArrowUp", "a (red cat:1.1)", "red cat"),
    ("a red  cat", "red ", "ArrowUp", "a (red:1.1)  cat", "red"),  # blanks at the ends stay outside
    ("a (red:1.1) cat", "red", "ArrowUp", "a (red:1.2) cat", "red"),
    ("a (red:1.1) cat", "red", "ArrowDown", "a red cat", "red"),  # 1.0: the parentheses go
    ("a (red:0.9) cat", "red", "ArrowUp", "a red cat", "red"),
    ("a (red:1.25) cat", "red", "ArrowUp", "a (red:1.35) cat", "red"),
    ("a (red:0.1) cat", "red", "ArrowDown", "a (red:0.0) cat", "red"),
    ("a red cat", 4, "ArrowUp", "a (red:1.1) cat", "red"),  # no selection: the word under the caret
    ("a (red:1.1) cat", 5, "ArrowUp", "a (red:1.2) cat", "red"),  # the caret in a group: the group
    ("a (red:1.1) cat", 9, "ArrowDown", "a red cat", "red"),  # the caret on the weight
    ("(red cat:1.2)", 6, "ArrowUp", "(red cat:1.3)", "red cat"),
    ("((red:1.2):1.1)", 3, "ArrowUp", "((red:1.3):1.1)", "red"),  # nested: the innermost group
    ("((red:1.2):1.1)", "(red:1.2)", "ArrowUp", "((red:1.2):1.2)", "(red:1.2)"),  # the outer one
    ("((red:1.1):1.1)", 3, "ArrowDown", "(red:1.1)", "red"),
    ("(red cat:1.2)", "cat", "ArrowUp", "(red (cat:1.1):1.2)", "cat"),  # part of a group: a group of its own
    ("x <lora:inkwash:1> y", 8, "ArrowUp", "x <lora:inkwash:1.05> y", "lora:inkwash"),  # LoRA: steps of 0.05
    ("x <lora:inkwash:0.95> y", 8, "ArrowUp", "x <lora:inkwash:1.0> y", "lora:inkwash"),  # the tag stays
    ("a, b", 2, "ArrowUp", "a, b", ""),  # nothing under the caret: nothing changes
]


def test_ctrl_up_down_emphasis_golden_cases(lpage):
    page = lpage
    page.goto("/")
    page.wait_for_selector("body[data-ready]")
    got = []
    for text, where, key, _, _ in EMPHASIS:
        page.fill("#prompt", text)
        start = text.index(where) if isinstance(where, str) else where
        end = start + len(where) if isinstance(where, str) else where
        set_selection(page, "#prompt", start, end)
        page.keyboard.press(f"Control+{key}")
        got.append(selection(page, "#prompt"))
    assert got == [(expected, selected) for *_, expected, selected in EMPHASIS]


def test_ctrl_up_down_keeps_the_selection_and_undoes(lpage):
    page = lpage
    page.goto("/")
    page.wait_for_selector("body[data-ready]")
    page.fill("#negative_prompt", "blurry, low quality")
    set_selection(page, "#negative_prompt", 8, 19)
    seen = []
    for key in ["ArrowUp", "ArrowUp", "ArrowDown", "ArrowDown", "ArrowDown", "ArrowUp"]:
        page.keyboard.press(f"Control+{key}")
        seen.append(selection(page, "#negative_prompt"))
    assert seen == [
        ("blurry, (low quality:1.1)", "low quality"),
        ("blurry, (low quality:1.2)", "low quality"),
        ("blurry, (low quality:1.1)", "low quality"),
        ("blurry, low quality", "low quality"),
        ("blurry, (low quality:0.9)", "low quality"),
        ("blurry, low quality", "low quality"),
    ]
    page.keyboard.press("Control+z")  # each change is one step of the browser's undo
    assert page.input_value("#negative_prompt") == "blurry, (low quality:0.9)"


EMBEDDINGS = {
    "loaded": {
        "emoji-style": {"step": 500, "sd_checkpoint": "abc123", "sd_checkpoint_name": "sdplay-emoji",
                        "shape": 768, "vectors": 2},
        "bad-hands": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 768, "vectors": 1},
    },
    "skipped": {
        "xl-only": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": "sdxl-base", "shape": 1280,
                    "vectors": 4},
    },
}  # fmt: skip


def test_embeddings_render_from_the_a1111_list_and_insert_their_name(lpage):
    from playwright.sync_api import expect

    page = lpage
    # the server's list in A1111's format, as /sdapi/v1/embeddings answers it once it lists the folder
    page.route("**/sdapi/v1/embeddings", lambda route: route.fulfill(json=EMBEDDINGS))
    open_networks(page)
    page.click("#tab-embeddings")
    expect(page.locator("#panel-embeddings")).to_be_visible()
    expect(page.locator("#panel-loras")).to_be_hidden()
    cards = page.locator("#panel-embeddings .network-card")
    expect(cards.locator(".name")).to_have_text(["bad-hands", "emoji-style", "xl-only"])
    expect(cards.locator(".detail")).to_have_text(["1 vector", "2 vectors", "4 vectors · not for this model"])
    expect(page.get_by_role("button", name="Embedding xl-only")).to_be_disabled()
    expect(page.locator("#tab-embeddings .count")).to_have_text("(3)")

    page.fill("#prompt", "a heart")
    page.get_by_role("button", name="Embedding emoji-style").click()
    expect(page.locator("#prompt")).to_have_value("a heart emoji-style")
    page.click("#negative_prompt")  # the box used last gets the next one
    page.get_by_role("button", name="Embedding bad-hands").click()
    expect(page.locator("#negative_prompt")).to_have_value("bad-hands")
    expect(page.locator("#prompt")).to_have_value("a heart emoji-style")
    page.fill("#networks-filter", "emoji")
    expect(page.locator("#panel-embeddings .network-card:visible .name")).to_have_text(["emoji-style"])


def test_a_server_without_loras_says_where_they_go(page, server):
    from playwright.sync_api import expect

    with httpx.Client(base_url=server.url, timeout=30) as client:
        listed = client.get("/sdapi/v1/loras").json()
    open_networks(page)
    empty = page.locator("#panel-loras .empty")
    if listed:
        expect(page.locator("#panel-loras .network-card")).to_have_count(len(listed))
        expect(empty).to_be_hidden()
    else:
        expect(empty).to_contain_text("--lora-dir")


def test_an_a1111_password_is_reported_in_the_panel(browser, lora_server, tmp_path):
    from playwright.sync_api import expect

    server, loras = lora_server
    with (
        live_server(tmp_path, server.engine, server.model, lora_dir=loras, api_auth="ana:secret") as guarded,
        browser_page(browser, guarded.url) as page,
    ):
        page.goto("/")
        page.wait_for_selector("body[data-networks]")  # the native API is open; only the lists are refused
        expect(page.locator(".notice.error")).to_contain_text("Incorrect username or password.")
        expect(page.locator("#panel-loras .network-card")).to_have_count(0)


def test_the_lists_are_read_with_the_api_key(browser, lora_server, tmp_path):
    from playwright.sync_api import expect

    server, loras = lora_server
    with (
        live_server(tmp_path, server.engine, server.model, lora_dir=loras, api_key="k3y") as keyed,
        browser_page(browser, keyed.url) as page,
    ):
        page.add_init_script("localStorage.setItem('sdplay.apiKey', 'k3y')")
        open_networks(page)
        expect(page.locator("#panel-loras .network-card .name")).to_have_text(["inkwash", "pastel_dream"])
        page.click("#networks-refresh")
        expect(page.locator(".notice").last).to_contain_text(re.compile(r"^2 LoRAs, \d+ embeddings?\.$"))
