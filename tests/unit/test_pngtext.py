"""PNG text chunks read without decoding pixels, with bounded decompression; malformed metadata is a 4xx."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
from hostile_png import black_idat, chunk, itxt, png, text, ztxt_bomb

from sdplay.errors import InvalidRequest
from sdplay.images import read_png_info
from sdplay.pngtext import ImageTooLarge, read_png_text


def test_reads_text_itxt_and_ztxt_chunks_and_the_declared_size():
    import zlib

    ztxt = chunk(b"zTXt", b"comment\0\0" + zlib.compress("déjà".encode("latin-1")))
    data = png(16, 8, text("parameters", "a cat\nSteps: 3, Seed: 7"), itxt("sdplay", '{"seed": 7}', True), ztxt)
    got = read_png_text(data)
    assert (got.width, got.height) == (16, 8)
    assert got.text == {"parameters": "a cat\nSteps: 3, Seed: 7", "sdplay": '{"seed": 7}', "comment": "déjà"}
    info = read_png_info(data)
    assert info["fields"]["Seed"] == "7" and info["sdplay"] == {"seed": 7} and info["size"] == (16, 8)


def test_text_after_the_pixels_is_found_too():
    data = png(8, 8)
    data = data[:-12] + text("parameters", "late\nSteps: 1") + data[-12:]  # before IEND
    assert read_png_text(data).text["parameters"] == "late\nSteps: 1"


def test_a_declared_20000_square_image_is_refused_from_its_header():
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        read_png_text(png(20000, 20000, idat=b""))


def test_a_ztxt_bomb_stops_at_the_bound():
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="text"):
            read_png_text(png(8, 8, ztxt_bomb(megabytes=50)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, peak  # the 50 MB never existed


def test_a_valid_9000_square_png_is_read_without_decoding_its_pixels():
    data = png(9000, 9000, text("parameters", "big\nSteps: 2"), idat=black_idat(9000, 9000))
    assert len(data) < 400_000
    tracemalloc.start()
    try:
        start = time.perf_counter()
        info = read_png_info(data)
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["size"] == (9000, 9000) and info["fields"]["prompt"] == "big"
    assert peak < 5 * 2**20 and took < 1.0, (peak, took)  # decoding would need 243 MB


@pytest.mark.parametrize(
    "data, words",
    [
        (b"GIF89a...", "not a PNG"),
        (b"\x89PNG\r\n\x1a\n", "no IHDR"),
        (png(8, 8)[:40], "past the end"),
        (b"\x89PNG\r\n\x1a\n" + chunk(b"IDAT", b"x"), "IHDR"),
        (png(0, 8), "0x8"),
        (png(8, 8, chunk(b"zTXt", b"k\0\0not zlib")), "corrupt"),
        (png(8, 8, chunk(b"zTXt", b"k\0\x07abc")), "compression method"),
        (png(8, 8, chunk(b"tEXt", b"no separator")), "keyword"),
        (png(8, 8, chunk(b"iTXt", b"k\0\0\0\0\0\xff\xfe")), "not valid utf-8"),
    ],
)
def test_malformed_files_are_invalid_requests(data, words):
    with pytest.raises(InvalidRequest, match=words):
        read_png_text(data)


@pytest.mark.parametrize(
    "chunks, words",
    [
        ([itxt("sdplay", "{not json")], "not valid JSON"),
        ([itxt("sdplay", '{"x": NaN}')], "not valid JSON"),
        ([itxt("sdplay", '"\\ud800"')], "not valid JSON"),
        ([itxt("sdplay", "[" * 100_000 + "]" * 100_000)], "not valid JSON"),
        ([text("parameters", 'p\nSteps: 2, Foo: "abc')], "malformed quoted"),
        ([text("parameters", 'p\nSteps: 2, Foo: "\\x"')], "malformed quoted"),
    ],
)
def test_malformed_metadata_is_an_invalid_request(chunks, words):
    with pytest.raises(InvalidRequest, match=words):
        read_png_info(png(8, 8, *chunks))


def test_quoted_values_written_by_sdplay_read_back():
    from sdplay.images import a1111_parameters

    written = a1111_parameters("p", "", {"Steps": 2, "Model": 'a, "b": c'})
    assert read_png_info(png(8, 8, itxt("parameters", written)))["fields"]["Model"] == 'a, "b": c'
    assert json.loads(json.dumps(read_png_info(png(8, 8))))["sdplay"] is None
