"""benchmarks/agreement_pairs.py: in the "across" groups the noun nearest the verb has the other number, so
agreeing with the nearest noun is always wrong there and always right in the simple group."""

from __future__ import annotations

from benchmarks.agreement_pairs import NOUNS, RELATIVES, VERBS, build_pairs

NUMBER = {sing: "singular" for sing, _ in NOUNS} | {plur: "plural" for _, plur in NOUNS}
for clauses in RELATIVES:
    for number, clause in zip(("singular", "plural"), clauses):
        NUMBER[clause.split()[2]] = number  # "that the critics liked": critics
VERB_NUMBER = {s: "singular" for s, _, _ in VERBS} | {p: "plural" for _, p, _ in VERBS}


def nearest_noun_is_right(good: str, bad: str) -> bool:
    """Whether the verb of `good` agrees with the last noun before it (the verb: the first word that differs)."""
    words, other = good.split(), bad.split()
    verb = next(i for i, (a, b) in enumerate(zip(words, other)) if a != b)
    nearest = next(w for w in reversed(words[:verb]) if w in NUMBER)
    return NUMBER[nearest] == VERB_NUMBER[words[verb]]


def test_the_nearest_noun_misleads_in_both_across_groups_and_never_in_the_simple_one() -> None:
    pairs = build_pairs(per_group=100, seed=0)
    by_group: dict[str, list[bool]] = {}
    for p in pairs:
        by_group.setdefault(p["group"], []).append(
            nearest_noun_is_right(p["sentence_good"], p["sentence_bad"])
        )
    assert {g: len(v) for g, v in by_group.items()} == {
        "simple": 100,
        "across_pp": 100,
        "across_relative": 100,
    }
    assert all(by_group["simple"])
    assert not any(by_group["across_pp"]) and not any(by_group["across_relative"])
    # both numbers of head noun occur in every group
    heads = {p["group"]: set() for p in pairs}
    for p in pairs:
        heads[p["group"]].add(NUMBER[p["sentence_good"].split()[1]])
    assert all(h == {"singular", "plural"} for h in heads.values())
