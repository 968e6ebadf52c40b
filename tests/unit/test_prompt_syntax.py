"""Golden cases of A1111's prompt syntax, written from its documented behaviour (wiki "Features" and its tests)."""

import pytest

from sdplay.prompt_syntax import BREAK, LoraRef, extract_loras, parse_attention, schedule


def approx(pieces):
    return [(t, pytest.approx(w)) for t, w in pieces]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("((x))", [("x", 1.21)]),
        ("(x:1.3)", [("x", 1.3)]),
        ("(x: 0.5 )", [("x", 0.5)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]]", [("x", 1 / 1.21)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("unbalanced)", [("unbalanced)", 1.0)]),
        ("a ]b", [("a ]b", 1.0)]),
        ("x:1.3)", [("x:1.3)", 1.0)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        (r"\[x\)", [("[x)", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        ),
        ("", [("", 1.0)]),
    ],
)
def test_attention_weights(text, expected):
    assert parse_attention(text) == approx(expected)


def test_break_separates_chunks_and_eats_its_spaces():
    assert parse_attention("a cat BREAK a (dog)") == approx([("a cat", 1.0), (BREAK, -1.0), ("a ", 1.0), ("dog", 1.1)])
    assert parse_attention("BREAKFAST") == [("BREAKFAST", 1.0)]  # only the whole word
    assert parse_attention("(a BREAK b)") == approx([("a", 1.1), (BREAK, -1.0), ("b", 1.1)])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [b::3]", [(3, "a b"), (10, "a ")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("a [b:c:0.25] d", [(2, "a b d"), (10, "a c d")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
        ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
        ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
        ("a | b", [(10, "a | b")]),
        ("a [b:20] c", [(10, "a  c")]),  # a step past the end never comes
        (r"\[a:3\]", [(10, r"\[a:3\]")]),
    ],
)
def test_editing_and_alternation_schedules(text, expected):
    assert schedule(text, 10) == expected


def test_lora_tags_are_removed_and_listed():
    text, refs = extract_loras(
        "a cat <lora:ink:0.8>, <lora:Film Grain> on a mat <lora:x:0.5:1.0> <lyco:y:te=0.2:unet=1>"
    )
    assert text == "a cat ,  on a mat  "
    assert refs == [LoraRef("ink", 0.8), LoraRef("Film Grain", 1.0), LoraRef("x", 1.0, 0.5), LoraRef("y", 1.0, 0.2)]
    assert extract_loras("<lora:x:strong>") == ("<lora:x:strong>", [])
    assert extract_loras("<hypernet:x:1>") == ("<hypernet:x:1>", [])
