import unicodedata

import pytest

from kshot.fewshot.labels import MAX_LABEL_LENGTH, UNKNOWN, check_label


@pytest.mark.parametrize(
    "label",
    [
        "Mildiou de la tomate",
        "トマト",
        "томат",
        "طماطم",
        "🍅",
        "tomato 🍅 leaf",
        "❤️",  # heart + variation selector (a mark, not a control character)
        "🇫🇷",  # regional indicators
        "a",
        "unknown species",
        "x" * MAX_LABEL_LENGTH,
        "A/B: c-d_e (f) 'g' \"h\"",
    ],
)
def test_accepts_unicode_text(label):
    assert check_label(label) == label


def test_nfc_normalises():
    decomposed = "Mildiou de la tomate e\u0301te\u0301"
    assert not unicodedata.is_normalized("NFC", decomposed)
    result = check_label(decomposed)
    assert result == "Mildiou de la tomate été"
    assert "\u0301" not in result
    assert unicodedata.is_normalized("NFC", result)
    assert check_label("トマト") == check_label(unicodedata.normalize("NFD", "トマト"))


def test_length_counts_nfc_characters():
    # 200 decomposed letters are 400 code points, but 200 characters once composed
    assert check_label("e\u0301" * MAX_LABEL_LENGTH) == "é" * MAX_LABEL_LENGTH


@pytest.mark.parametrize("label", ["", " ", "\t", "\n", "   \u3000 "])
def test_refuses_empty(label):
    with pytest.raises(ValueError, match="empty"):
        check_label(label)


@pytest.mark.parametrize("label", [" tomato", "tomato ", "tomato\u00a0", "\u3000tomato"])
def test_refuses_whitespace_padding(label):
    with pytest.raises(ValueError, match="white space"):
        check_label(label)


@pytest.mark.parametrize(
    "label",
    ["to\tmato", "to\nmato", "to\rmato", "to\x00mato", "to\x1bmato", "to\x7fmato", "to\x85mato"],
)
def test_refuses_control_characters(label):
    with pytest.raises(ValueError, match="contains"):
        check_label(label)


@pytest.mark.parametrize(
    "label", ["to\u202emato", "to\ud800mato"], ids=["bidi-override", "surrogate"]
)
def test_refuses_other_invisible_or_unencodable_characters(label):
    with pytest.raises(ValueError):
        check_label(label)


@pytest.mark.parametrize("label", [UNKNOWN, "Unknown", "UNKNOWN", "uNkNoWn", "unknowN"])
def test_refuses_unknown_in_any_case(label):
    with pytest.raises(ValueError, match="reserved"):
        check_label(label)


def test_refuses_too_long():
    with pytest.raises(ValueError, match=str(MAX_LABEL_LENGTH)):
        check_label("x" * (MAX_LABEL_LENGTH + 1))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_refuses_unicode_line_separators(separator):
    label = f"to{separator}mato"
    assert len(label.splitlines()) == 2
    with pytest.raises(ValueError):
        check_label(label)


@pytest.mark.parametrize(
    "label", ["👩\u200d🌾", "می\u200cخواهم"], ids=["emoji-zwj-sequence", "persian-zwnj"]
)
def test_accepts_joiners_people_type(label):
    assert check_label(label) == label


@pytest.mark.parametrize("label", ["Tomato/Late blight", "トマト/疫病", "a/b"])
def test_two_level_labels_are_accepted(label):
    assert check_label(label) == label


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("Tomato/", "empty group or class"),
        ("/blight", "empty group or class"),
        ("a//b", "levels"),
        ("a/b/c", "3 levels; at most two"),
        ("Tomato/ blight", "white space"),
        ("Tomato/unknown", "reserved"),
    ],
)
def test_bad_two_level_labels_are_refused(label, words):
    with pytest.raises(ValueError, match=words):
        check_label(label)
