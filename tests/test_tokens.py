"""Tests for jaxseq.tokens: alphabet, encode/decode, soft mask, complement and reverse complement."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxseq import tokens
from jaxseq.tokens import A, C, G, MASK, N, T


def test_alphabet_constants():
    assert (A, C, G, T, N, MASK) == (0, 1, 2, 3, 4, 5)
    assert tokens.NUM_BASES == 4 and tokens.NUM_TOKENS == 6
    assert tokens.SYMBOLS == "ACGTN?"
    # complement of a base b < 4 is 3 - b (docs/STYLE.md)
    assert [3 - b for b in range(4)] == list(tokens.complement(np.arange(4, dtype=np.uint8)))


def test_encode_values_and_decode_round_trip():
    encoded = tokens.encode("ACGTN")
    assert encoded.dtype == np.uint8
    assert encoded.tolist() == [A, C, G, T, N]
    assert tokens.decode(encoded) == "ACGTN"
    assert tokens.decode(np.array([A, MASK, T], dtype=np.int8)) == "A?T"


def test_encode_accepts_bytes_str_array_and_memoryview():
    text = "GATTACAgattaca"
    expected = [G, A, T, T, A, C, A] * 2
    for form in (text, text.encode(), bytearray(text.encode()), memoryview(text.encode()),
                 np.frombuffer(text.encode(), dtype=np.uint8)):
        assert tokens.encode(form).tolist() == expected


def test_lowercase_maps_to_same_base_and_soft_mask_marks_it():
    assert tokens.encode("acgtn").tolist() == tokens.encode("ACGTN").tolist()
    assert tokens.soft_mask(b"ACgtNn").tolist() == [False, False, True, True, False, True]
    assert tokens.soft_mask("aC").tolist() == [True, False]
    assert tokens.soft_mask(np.frombuffer(b"tT", dtype=np.uint8)).tolist() == [True, False]


@pytest.mark.parametrize("letter", list("RYKMSWBDHVNrykmswbdhvn"))
def test_iupac_ambiguity_codes_map_to_n(letter):
    assert tokens.encode(letter).tolist() == [N]


def test_u_reads_as_t():
    assert tokens.encode("Uu").tolist() == [T, T]


def test_byte_table_accepts_exactly_bases_iupac_and_u():
    valid = {chr(b) for b in range(256) if tokens.BYTE_TO_TOKEN[b] >= 0}
    expected = set("ACGTURYKMSWBDHVN") | set("acgturykmswbdhvn")
    assert valid == expected
    assert tokens.BYTE_TO_TOKEN.shape == (256,)


@pytest.mark.parametrize("bad, shown", [
    ("7", "'7'"), ("*", r"'\*'"), ("-", "'-'"), (".", r"'\.'"), (" ", "' '"), ("X", "'X'"),
    ("\r", r"'\\r'"), ("é", "'é'"),
])
def test_invalid_character_names_record_and_position(bad, shown):
    with pytest.raises(tokens.InvalidSequenceError, match=rf"record 'chr2': invalid character {shown} at position 14 "):
        tokens.encode("ACGT" + bad + "ACGT", record="chr2", offset=9)


def test_invalid_non_ascii_bytes_and_count():
    with pytest.raises(tokens.InvalidSequenceError, match=r"sequence: invalid character .* at position 2 .*2 invalid"):
        tokens.encode(b"A\xc3\xa9C")


def test_complement_keeps_n_and_mask_and_dtype():
    for dtype in (np.uint8, np.int8, np.int32):
        x = np.array([A, C, G, T, N, MASK], dtype=dtype)
        out = tokens.complement(x)
        assert out.dtype == dtype
        assert out.tolist() == [T, G, C, A, N, MASK]


def test_reverse_complement_along_last_axis_any_shape():
    batch = np.array([[A, A, C, N, MASK], [G, T, T, C, A]], dtype=np.int8)
    out = tokens.reverse_complement(batch)
    assert out.shape == (2, 5) and out.dtype == np.int8
    assert tokens.decode(out[0]) == "?NGTT"
    assert tokens.decode(out[1]) == "TGAAC"
    assert tokens.reverse(batch)[1].tolist() == [A, C, T, T, G]
    cube = np.arange(24).reshape(2, 3, 4) % 6
    assert np.array_equal(tokens.reverse_complement(cube)[1, 2], tokens.complement(cube[1, 2][::-1]))


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ACGTNacgtn", max_size=200))
def test_round_trip_and_reverse_complement_involution(text):
    encoded = tokens.encode(text)
    assert tokens.decode(encoded) == text.upper()
    assert np.array_equal(tokens.reverse_complement(tokens.reverse_complement(encoded)), encoded)
    assert np.array_equal(tokens.soft_mask(text.encode()), np.array([c.islower() for c in text], dtype=bool))


def test_format_reconstruction_marks_mismatches_but_not_n():
    target = tokens.encode("ACGTN")
    predicted = tokens.encode("ACCTA")
    lines = tokens.format_reconstruction(target, predicted).splitlines()
    assert lines[0].endswith("ACGTN")
    assert lines[1].endswith("  ^  ")  # position 3 differs; position 5 is N in the target, never a mismatch
    assert lines[2].endswith("ACCTA")
