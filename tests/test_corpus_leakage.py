"""No held-out sentence is a training sentence under the normalised key (data/dedup_key.py):
the committed corpus, the build rule (data/build.py) and the multilingual rule (data/multi.py)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

from data.build import SHIPPED_DIR, assign_splits, load_provenance, split_of
from data.dedup_key import RULE, collisions, dedup_key, side_keys
from data.multi import PIVOT, SourceUnits, assemble
from tests.test_multi_data import fixture_units, synthetic_units

NAME = "debian_de_en"


def read_rows(path: Path) -> list[tuple[str, str]]:
    """The (en, de) rows of a committed split file (header ``en<TAB>de``)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
        assert f.readline() == "en\tde\n"
        return [(en, de) for en, de in (line.rstrip("\n").split("\t") for line in f)]


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[tuple[str, str]]]:
    return {s: read_rows(SHIPPED_DIR / f"{NAME}.{s}.tsv.gz") for s in ("train", "dev", "test")}


@pytest.mark.parametrize("split", ["dev", "test"])
def test_committed_split_shares_no_key_with_train(
    shipped: dict[str, list[tuple[str, str]]], split: str
) -> None:
    """Before the key rule: dev 52 English / 87 German, test 43 / 66 collided."""
    assert collisions(shipped[split], shipped["train"]) == [0, 0]


def test_provenance_records_the_committed_files(shipped: dict[str, list[tuple[str, str]]]) -> None:
    prov = load_provenance(SHIPPED_DIR, NAME)
    assert prov is not None and prov["overlap_rule"] == RULE
    for split, rows in shipped.items():
        text = "en\tde\n" + "".join(f"{en}\t{de}\n" for en, de in rows)
        record = prov["files"][split]
        assert record["sha256_text"] == hashlib.sha256(text.encode()).hexdigest(), split
        assert record["pairs"] == prov["counts"][split]["total"] == len(rows)


def test_key_folds_form_case_digits_and_punctuation() -> None:
    assert dedup_key("Version 2.4 -- the  FILE menu!") == "version 0 0 the file menu"
    assert dedup_key("version 3.1: the file menu") == "version 0 0 the file menu"
    assert dedup_key("Ｆｉｌｅ ２") == dedup_key("ﬁle 7") == "file 0"  # NFKC: full width, ligature
    assert dedup_key("Straße »öffnen«") == "strasse öffnen"
    assert dedup_key("snake_case\ttab") == "snake case tab"
    assert dedup_key("Öffnen") != dedup_key("Offnen")  # letters stay letters


def test_build_drops_a_held_out_pair_seen_on_either_side() -> None:
    train_g, dev_g, test_g = (
        next(f"p{i}" for i in range(100) if split_of(f"p{i}") == s)
        for s in ("train", "dev", "test")
    )
    train = [
        (train_g, "Open the File menu.", "Öffnen Sie das Menü Datei."),
        (train_g, "Uses 2 threads.", "Nutzt 2 Threads."),
    ]
    held = [
        (test_g, "open the file menu", "Ganz anders."),  # English seen
        (test_g, "Something new.", "öffnen sie das menü datei!"),  # German seen
        (dev_g, "Uses 8 threads", "Nutzt 8 Threads"),  # both seen, digits folded
        (test_g, "Kept.", "Behalten."),
    ]
    by_split, dropped = assign_splits({"src": train + held})
    assert [en for _, en, _ in by_split["test"]] == ["Kept."] and by_split["dev"] == []
    assert dropped == {"dev_dropped_overlap": 1, "test_dropped_overlap": 2}
    assert len(by_split["train"]) == 2


def multi_leaks(units: dict[str, SourceUnits]) -> dict[str, list[int]]:
    """Per stored dev/test pair and split: how many rows have a side whose key occurs in that
    language's text of any ``en-*`` train pair (``[side a, side b]``)."""
    rows = assemble(units).rows
    keys: dict[str, set[str]] = {PIVOT: set()}
    for (a, b), by_split in rows.items():
        if a == PIVOT:
            keys[PIVOT] |= side_keys(en for _, en, _ in by_split["train"])
            keys[b] = side_keys(xx for _, _, xx in by_split["train"])
    leaks = {}
    for (a, b), by_split in rows.items():
        for split in ("dev", "test"):
            leaks[f"{a}-{b}.{split}"] = [
                sum(dedup_key(r[i + 1]) in keys[lang] for r in by_split[split])
                for i, lang in enumerate((a, b))
            ]
    return leaks


def test_multilingual_pairs_share_no_key_with_any_training_text(tmp_path: Path) -> None:
    for units in (fixture_units(tmp_path), synthetic_units()):
        leaks = multi_leaks(units)
        assert len(leaks) == 12 and set(map(tuple, leaks.values())) == {(0, 0)}, leaks
