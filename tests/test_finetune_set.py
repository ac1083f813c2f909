"""The fine-tuning set: nothing that shares a side with the base corpus's dev/test (under the
normalised dedup key) gets in, and the base training split follows ``replay`` times."""

from __future__ import annotations

from data.finetune_set import finetune_pairs


def test_pairs_sharing_a_side_with_dev_or_test_are_dropped_and_base_is_replayed() -> None:
    held = [("Open the file.", "Datei öffnen."), ("Quit", "Beenden")]
    new = [
        ("open the file", "Öffne die Datei"),  # English side held (case, punctuation)
        ("Exit now", "beenden"),  # German side held
        ("Could not open {1}", "Konnte {1} nicht öffnen"),
    ]
    base = [("a b", "a b c")]
    train, dropped = finetune_pairs(new, base, held, replay=2)
    assert dropped == 2
    assert train == [("Could not open {1}", "Konnte {1} nicht öffnen"), *base, *base]
