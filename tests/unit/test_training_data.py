"""Training data: the emoji package reader, the cached array file, and folders of captioned images."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdplay.errors import DataError
from sdplay.training import data


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _tiny_package(path: Path) -> Path:
    """A tarball laid out like emoji-datasource-google: emoji.json plus 64px PNGs."""
    entries = [
        {"name": "HEAVY BLACK HEART", "unified": "2764-FE0F", "non_qualified": "2764", "image": "2764-fe0f.png",
         "short_names": ["heart"], "category": "Smileys & Emotion", "sort_order": 2, "has_img_google": True,
         "skin_variations": {"1F3FB": {"image": "x.png"}}},
        {"name": "BLUE HEART", "unified": "1F499", "image": "1f499.png", "short_names": ["blue_heart"],
         "category": "Smileys & Emotion", "sort_order": 1, "has_img_google": True},
        {"name": "EMOJI MODIFIER FITZPATRICK TYPE-3", "unified": "1F3FC", "image": "1f3fc.png",
         "short_names": ["skin-tone-3"], "category": "Component", "sort_order": 3, "has_img_google": True},
        {"name": "Japan Flag", "unified": "1F1EF-1F1F5", "image": "1f1ef-1f1f5.png", "short_names": ["jp"],
         "category": "Flags", "sort_order": 4, "has_img_google": True},
        {"name": "NO IMAGE", "unified": "1F600", "image": "missing.png", "short_names": ["x"],
         "category": "Smileys & Emotion", "sort_order": 5, "has_img_google": True},
    ]  # fmt: skip
    red = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    red.paste((220, 20, 30, 255), (16, 16, 48, 48))
    files = {
        "package/emoji.json": json.dumps(entries).encode(),
        "package/img/google/64/2764-fe0f.png": _png(red),
        "package/img/google/64/1f499.png": _png(Image.new("RGB", (64, 64), (20, 40, 230))),
        "package/img/google/64/1f3fc.png": _png(Image.new("RGB", (64, 64), (200, 150, 100))),
        "package/img/google/64/1f1ef-1f1f5.png": _png(Image.new("P", (64, 64), 3)),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _json_package(path: Path, member: str, payload) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        raw = json.dumps(payload).encode()
        info = tarfile.TarInfo(member)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    return path


def _keyword_packages(folder: Path) -> tuple[Path, Path]:
    """Tarballs laid out like emojilib (keywords by character) and cldr-annotations-full (en annotations)."""
    lib = {"\u2764\ufe0f": ["red_heart", "love", "like", "valentines"], "\U0001f499": ["blue_heart", "love"]}
    cldr = {"annotations": {"annotations": {"\u2764": {"default": ["emotion", "heart", "love"], "tts": ["red heart"]}}}}
    return (
        _json_package(folder / "emojilib-4.0.3.tgz", data.EMOJILIB_FILE, lib),
        _json_package(folder / "cldr-annotations-full-48.2.0.tgz", data.CLDR_FILE, cldr),
    )


def test_keywords_come_from_cldr_then_emojilib_without_the_names(tmp_path):
    pytest.importorskip("emoji")
    keywords = data.read_keywords(*_keyword_packages(tmp_path))
    assert keywords["\u2764"] == ["emotion", "heart", "love", "like", "valentines"]  # no variation selector
    pairs = data.read_package(_tiny_package(tmp_path / "emoji-datasource-google-16.0.0.tgz"), keywords)
    assert pairs.keywords[1] == ["emotion", "love", "like", "valentines"]  # "heart" is already a name
    assert pairs.keywords[0] == ["love"] and pairs.keywords[2] == []
    assert "npm:emojilib@4" in pairs.source


def test_package_gives_base_emoji_with_cldr_captions_on_white(tmp_path):
    pytest.importorskip("emoji")
    pairs = data.read_package(_tiny_package(tmp_path / "emoji-datasource-google-16.0.0.tgz"))
    assert pairs.captions == ["blue heart", "red heart", "japan flag"]  # sort order; no swatch, no missing image
    assert pairs.variants[1][:3] == ["red heart", "heavy black heart", "heart"]
    assert "red heart, smileys & emotion" in pairs.variants[1]
    assert pairs.categories == ["smileys & emotion", "smileys & emotion", "flags"]
    assert pairs.images.shape == (3, 64, 64, 3) and pairs.images.dtype == np.uint8
    heart = pairs.images[1]
    assert tuple(heart[0, 0]) == (255, 255, 255)  # transparent corner composited onto white
    assert tuple(heart[32, 32]) == (220, 20, 30)


def test_cached_file_round_trip_and_prepare_uses_the_cache(tmp_path, monkeypatch):
    pytest.importorskip("emoji")
    monkeypatch.setenv("SDPLAY_CACHE", str(tmp_path))
    _tiny_package((tmp_path / "npm").mkdir() or tmp_path / "npm" / "emoji-datasource-google-16.0.0.tgz")
    _keyword_packages(tmp_path / "npm")  # present, so nothing is downloaded
    path = data.prepare(tmp_path / "set.npz")
    loaded = data.load_set(path)
    assert loaded.captions == ["blue heart", "red heart", "japan flag"]
    assert loaded.keywords == [["love"], ["emotion", "love", "like", "valentines"], []]
    assert loaded.variants[1][0] == "red heart" and loaded.source.startswith("npm:")
    assert data.default_data_path() == tmp_path / "data" / "emoji64.npz"


def test_missing_and_corrupt_data_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"No training data at .*nothing.npz") as err:
        data.load_set(tmp_path / "nothing.npz")
    assert "--prepare" in str(err.value)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"bad.npz is corrupt"):
        data.load_set(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((2, 8, 8), np.uint8), captions=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"wrong.npz holds"):
        data.load_set(wrong)
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((2, 8, 8, 3), np.uint8), captions=np.array(["a", "  "]))
    with pytest.raises(DataError, match=r"Empty caption in .*empty.npz item 1"):
        data.load_set(empty)


def test_broken_package_is_named(tmp_path):
    broken = tmp_path / "emoji-datasource-google-16.0.0.tgz"
    broken.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(DataError, match=r"emoji-datasource-google-16.0.0.tgz is not a readable"):
        data.read_package(broken)
    with pytest.raises(DataError, match=r"has no readable package/annotations/en/annotations.json") as err:
        data.read_keywords(broken, broken)
    assert "--prepare --force" in str(err.value)


def test_fetch_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on this PATH
    with pytest.raises(DataError, match=r"npm is not installed") as err:
        data.fetch_package(tmp_path / "npm")
    assert "npm pack emoji-datasource-google@16" in str(err.value)


def _caption(folder: Path, name: str, text: str) -> None:
    (folder / f"{name}.txt").write_text(text)


def test_folder_converts_modes_and_sizes(tmp_path):
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    rgba.paste((0, 200, 0, 255), (10, 5, 30, 25))
    rgba.save(tmp_path / "a.png")
    Image.new("L", (100, 50), 80).save(tmp_path / "b.jpg")
    Image.new("P", (16, 16), 5).save(tmp_path / "c.gif")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(tmp_path / "d.png")  # 16-bit grey
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(tmp_path / "e.jpg")
    for name, text in zip("abcde", ["green square", "grey", "palette", "white", "red  \n"], strict=True):
        _caption(tmp_path, name, text)
    (tmp_path / "notes.md").write_text("ignored")
    pairs = data.load_folder(tmp_path, 16)
    assert pairs.images.shape == (5, 16, 16, 3)
    assert pairs.captions == ["green square", "grey", "palette", "white", "red"]
    assert tuple(pairs.images[0, 0, 0]) == (255, 255, 255)  # transparency -> white
    assert pairs.images[0, 8, 8, 1] > 150 > pairs.images[0, 8, 8, 0]
    assert tuple(pairs.images[3, 8, 8]) == (255, 255, 255)
    assert pairs.images[4, 8, 8, 0] > 200 > pairs.images[4, 8, 8, 2]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: Image.new("RGB", (20, 20)).save(d / "x.png"), r"x.png has no caption file x.txt"),
        (lambda d: (Image.new("RGB", (9, 9)).save(d / "x.png"), _caption(d, "x", " \n")), r"Empty caption in .*x.txt"),
        (lambda d: ((d / "x.png").write_bytes(b"not an image"), _caption(d, "x", "cat")), r"x.png is not a readable"),
        (lambda d: (Image.new("RGB", (4, 40)).save(d / "x.png"), _caption(d, "x", "cat")), r"x.png is 4x40, too small"),
        (lambda d: (d / "only.txt").write_text("cat"), r"holds no images"),
    ],
)  # fmt: skip
def test_folder_problems_name_the_file(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        data.load_folder(tmp_path, 16)


def test_not_a_folder(tmp_path):
    with pytest.raises(DataError, match=r"is not a folder"):
        data.load_folder(tmp_path / "absent", 16)
