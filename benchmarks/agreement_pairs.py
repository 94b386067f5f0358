"""Subject-verb agreement minimal pairs (BLiMP's JSONL format) built from templates, for `masklm score`.

    python -m benchmarks.agreement_pairs --output agreement.jsonl            # 100 pairs per group, seed 0
    masklm score runs/demo --data agreement.jsonl

Each pair is one sentence with the verb agreeing with its subject and the same sentence with the verb of the
other number: "the actor is great" / "the actor are great". Three groups, as BLiMP's agreement sets grade them:

- simple: the verb right after its subject;
- across_pp: a prepositional phrase whose noun has the other number stands between ("the actor in the films is");
- across_relative: a relative clause whose subject has the other number stands between ("the actor that the
  critics liked is", "the actors that the critic liked are").

In both "across" groups the noun nearest the verb has the other number, so a model that agrees with the nearest
noun scores 0% there, and one that ignores number scores about 50%.

Words are everyday movie-review words, so a model pretrained on IMDB reviews has seen all of them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

NOUNS = [
    ("actor", "actors"), ("film", "films"), ("movie", "movies"), ("director", "directors"), ("story", "stories"),
    ("character", "characters"), ("scene", "scenes"), ("script", "scripts"), ("performance", "performances"),
    ("ending", "endings"), ("song", "songs"), ("villain", "villains"),
]  # fmt: skip
VERBS = [
    ("is", "are", "great"), ("was", "were", "boring"), ("has", "have", "no charm"), ("seems", "seem", "too long"),
    ("makes", "make", "no sense"), ("looks", "look", "cheap"), ("feels", "feel", "real"),
]  # fmt: skip
PREPOSITIONS = ["in", "of", "near", "behind", "with"]
# (singular, plural) subject of the relative clause: the one of the other number than the head noun is used
RELATIVES = [
    ("that the critic liked", "that the critics liked"),
    ("that the kid loved", "that the kids loved"),
    ("that the fan hated", "that the fans hated"),
]


def _pair(subject: str, middle: str, verbs: tuple[str, str, str], plural: bool) -> tuple[str, str]:
    singular_verb, plural_verb, rest = verbs
    good, bad = (plural_verb, singular_verb) if plural else (singular_verb, plural_verb)
    words = ["the", subject, *([middle] if middle else [])]
    return " ".join([*words, good, rest]), " ".join([*words, bad, rest])


def build_pairs(per_group: int = 100, seed: int = 0) -> list[dict[str, str]]:
    """`per_group` pairs in each of the three groups, drawn without repeats from all template fillings."""
    rng = random.Random(seed)
    groups: dict[str, list[tuple[str, str]]] = {"simple": [], "across_pp": [], "across_relative": []}
    for (sing, plur), verbs, number in itertools.product(NOUNS, VERBS, (False, True)):
        subject = plur if number else sing
        groups["simple"].append(_pair(subject, "", verbs, number))
        for prep, (other_sing, other_plur) in itertools.product(PREPOSITIONS, NOUNS):
            if other_sing != sing:  # the attractor has the other number
                attractor = other_sing if number else other_plur
                groups["across_pp"].append(_pair(subject, f"{prep} the {attractor}", verbs, number))
        for singular_clause, plural_clause in RELATIVES:
            relative = singular_clause if number else plural_clause  # the attractor has the other number
            groups["across_relative"].append(_pair(subject, relative, verbs, number))
    out = []
    for group, pairs in groups.items():
        for good, bad in rng.sample(pairs, min(per_group, len(pairs))):
            out.append({"sentence_good": good, "sentence_bad": bad, "group": group})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", required=True, help="the JSONL file to write")
    ap.add_argument("--per-group", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pairs = build_pairs(args.per_group, args.seed)
    Path(args.output).write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    print(f"wrote {len(pairs)} pairs to {args.output}")


if __name__ == "__main__":
    main()
