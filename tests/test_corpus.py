"""Tests for data.errors, data.atomic and data.corpus (tiny files, no network)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from data.atomic import atomic_open, atomic_write_bytes, atomic_write_text, write_json_result
from data.corpus import load_hub, load_split, load_split_counted, load_text_pair
from data.errors import DataError
from data.filtering import FilterStats, filter_pairs

TSV = "en\tde\nHello world\tHallo Welt\nThe green street\tDie grüne Straße\n007\tNA\n"


def write_gz(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    return path


@pytest.fixture
def hf_cache(tmp_path: Path) -> str:
    return str(tmp_path / "hf_cache")


# ---------------------------------------------------------------- errors / atomic
def test_data_error_is_one_line() -> None:
    err = DataError("file 'x.tsv'\nline 3:\n  bad")
    assert str(err) == "file 'x.tsv' line 3: bad"
    assert "\n" not in str(err)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first\n")
    atomic_write_text(target, "zweite Zeile ä\n")
    assert target.read_text(encoding="utf-8") == "zweite Zeile ä\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "out.txt"]


def test_result_json_creates_its_folder(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "results" / "r.json"
    write_json_result(target, {"bleu": 31.12, "rows": [1, 2]})
    text = target.read_text()
    assert json.loads(text) == {"bleu": 31.12, "rows": [1, 2]} and text.endswith("}\n")
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_atomic_open_exception_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_missing_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope.*does not exist"):
        atomic_write_text(missing / "f.txt", "x")


# ---------------------------------------------------------------- load_split
@pytest.mark.parametrize("gz", [False, True])
def test_load_tsv_both_directions(tmp_path: Path, hf_cache: str, gz: bool) -> None:
    if gz:
        path = write_gz(tmp_path / "c.tsv.gz", TSV.encode())
    else:
        path = tmp_path / "c.tsv"
        path.write_text(TSV, encoding="utf-8")
    en_de = load_split(path, "en", "de", cache_dir=hf_cache)
    assert en_de == [
        ("Hello world", "Hallo Welt"),
        ("The green street", "Die grüne Straße"),
        ("007", "NA"),  # read as text: no int parsing, no NA->None
    ]
    de_en = load_split(str(path), "de", "en", cache_dir=hf_cache)
    assert de_en == [(t, s) for s, t in en_de]


def test_load_tsv_quotes_are_literal(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "q.tsv"
    path.write_text('de\ten\n"Hallo\tsay "hi"\n', encoding="utf-8")
    assert load_split(path, "en", "de", cache_dir=hf_cache) == [('say "hi"', '"Hallo')]


def test_load_tsv_bad_utf8_error_names_file_and_line(tmp_path: Path, hf_cache: str) -> None:
    path = write_gz(tmp_path / "bad.tsv.gz", b"en\tde\nok\tgut\nbad \xff\tschlecht\n")
    with pytest.raises(DataError, match=r"bad\.tsv\.gz' line 3: invalid UTF-8 byte 0xff"):
        load_split(path, "en", "de", cache_dir=hf_cache)
    pairs, n_bad = load_split_counted(path, "en", "de", "replace", cache_dir=hf_cache)
    assert n_bad == 1
    assert pairs == [("ok", "gut"), ("bad \ufffd", "schlecht")]


def test_load_tsv_header_and_field_errors(tmp_path: Path, hf_cache: str) -> None:
    path = tmp_path / "h.tsv"
    path.write_text("english\tgerman\na\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: header columns \['english', 'german'\]"):
        load_split(path, "en", "de", cache_dir=hf_cache)
    path.write_text("en\tde\na\tb\tc\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: expected 2 tab-separated fields.*found 3"):
        load_split(path, "en", "de", cache_dir=hf_cache)
    path.write_bytes(b"en\tde\r\nok\tgut\r\na\rb\tc\r\n")
    with pytest.raises(DataError, match=r"line 3: carriage return \(\\r\) inside the line at col"):
        load_split(path, "en", "de", cache_dir=hf_cache)


def test_load_missing_file_and_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.tsv' does not exist"):
        load_split(tmp_path / "missing.tsv", "en", "de")
    other = tmp_path / "c.xlsx"
    other.write_text("x")
    with pytest.raises(DataError, match="unknown extension"):
        load_split(other, "en", "de")
    with pytest.raises(DataError, match="on_bad_utf8='ignore'"):
        load_split(other, "en", "de", on_bad_utf8="ignore")


def test_load_jsonl_columns_and_translation_dicts(tmp_path: Path, hf_cache: str) -> None:
    cols = tmp_path / "a.jsonl"
    cols.write_text(json.dumps({"en": "Hi", "de": "Hallo"}) + "\n", encoding="utf-8")
    assert load_split(cols, "de", "en", cache_dir=hf_cache) == [("Hallo", "Hi")]
    wmt = tmp_path / "b.jsonl"
    rows = [
        {"translation": {"de": "Grün", "en": "Green"}},
        {"translation": {"de": "Ja", "en": "Yes"}},
    ]
    wmt.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert load_split(wmt, "en", "de", cache_dir=hf_cache) == [("Green", "Grün"), ("Yes", "Ja")]
    with pytest.raises(DataError, match="need 'en' and 'fr'"):
        load_split(wmt, "en", "fr", cache_dir=hf_cache)


def test_load_hub_offline_is_one_line_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_hub("no-such-dataset-xyz", "de-en", "train", "en", "de")
    msg = str(info.value)
    assert "no-such-dataset-xyz" in msg and "cannot be reached" in msg and "offline" in msg
    assert "\n" not in msg


# ---------------------------------------------------------------- load_text_pair
def test_text_pair_ok_and_gz(tmp_path: Path) -> None:
    src = tmp_path / "a.en"
    src.write_text("one\ntwo\n", encoding="utf-8")
    tgt = write_gz(tmp_path / "a.de.gz", b"eins\nzwei\n")
    assert load_text_pair(src, tgt) == ([("one", "eins"), ("two", "zwei")], 0)


def test_text_pair_line_count_mismatch_names_both(tmp_path: Path) -> None:
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(DataError, match=r"a\.en' has 3 lines, .*a\.de' has 2"):
        load_text_pair(tmp_path / "a.en", tmp_path / "a.de")


def test_text_pair_bad_utf8(tmp_path: Path) -> None:
    (tmp_path / "a.en").write_bytes(b"one\ntw\xc3o\n")
    (tmp_path / "a.de").write_bytes(b"eins\nzwei\n")
    with pytest.raises(DataError, match=r"a\.en' line 2: invalid UTF-8 byte 0xc3 at column 3"):
        load_text_pair(tmp_path / "a.en", tmp_path / "a.de")
    pairs, n_bad = load_text_pair(tmp_path / "a.en", tmp_path / "a.de", on_bad_utf8="replace")
    assert n_bad == 1 and pairs[1] == ("tw\ufffdo", "zwei")


def test_text_pair_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.en").write_text("one\n")
    with pytest.raises(DataError, match="a.de' does not exist"):
        load_text_pair(tmp_path / "a.en", tmp_path / "a.de")


# ---------------------------------------------------------------- filtering
def test_filter_reasons_counted() -> None:
    pairs = [
        ("a b c", "x y z"),  # kept
        ("", "x"),  # empty
        ("a", "x y"),  # too_short (min_len=2)
        ("a b c d e f", "x y z w v u"),  # too_long (max_len=5)
        ("a b", "x y z w v"),  # ratio 2.5 > 2
        ("same thing", "same thing"),  # identical
        ("a b c", "x y z"),  # duplicate
        ("d e", "f g"),  # kept
    ]
    kept, stats = filter_pairs(pairs, min_len=2, max_len=5, max_ratio=2.0)
    assert kept == [("a b c", "x y z"), ("d e", "f g")]
    assert stats == FilterStats(
        total=8, kept=2, empty=1, too_short=1, too_long=1, ratio=1, identical=1, duplicate=1
    )
    assert "kept 2/8" in str(stats)


def test_filter_switches_and_length_fn() -> None:
    pairs = [("same", "same"), ("same", "same"), ("abcdef", "ab")]
    kept, stats = filter_pairs(pairs, 1, 0, 0, dedupe=False, drop_identical=False)
    assert kept == pairs and stats.kept == 3
    kept, stats = filter_pairs(pairs, 1, 4, 0, dedupe=False, drop_identical=False, length_fn=len)
    assert kept == pairs[:2] and stats.too_long == 1


def test_filter_everything_removed_is_data_error() -> None:
    with pytest.raises(DataError, match=r"no sentence pairs left.*too_long=2"):
        filter_pairs([("a b c", "x y z")] * 2, min_len=1, max_len=2, max_ratio=0, dedupe=False)
    with pytest.raises(DataError, match="min_len=-1"):
        filter_pairs([("a", "b")], min_len=-1)
