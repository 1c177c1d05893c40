"""Random container names in Docker's ``adjective_surname`` form."""

from __future__ import annotations

import random

ADJECTIVES = (
    "admiring adoring agitated amazing angry awesome blissful bold brave busy charming clever cool "
    "dazzling determined eager ecstatic elegant epic exciting festive focused friendly frosty funny "
    "gallant gifted goofy gracious happy hopeful jolly jovial keen kind laughing loving lucid magical "
    "modest nice nifty nostalgic optimistic peaceful pensive practical quirky relaxed romantic serene "
    "sharp silly sleepy stoic strange sweet tender thirsty trusting upbeat vibrant vigilant wizardly "
    "wonderful xenodochial youthful zealous zen"
).split()
SURNAMES = (
    "agnesi albattani archimedes babbage bardeen bell bhabha bohr boole borg cerf chandrasekhar curie "
    "darwin dijkstra einstein euclid euler faraday fermat fermi feynman franklin galileo gauss goldberg "
    "hamilton hawking hopper hypatia jang kepler knuth lamarr lovelace mayer mccarthy meitner mendel "
    "newton nobel noether pare pasteur perlman pike poincare ptolemy ritchie rosalind shannon stallman "
    "tesla thompson torvalds turing villani wiles wozniak wright yalow yonath"
).split()


def random_name(taken: set[str]) -> str:
    while True:
        name = f"{random.choice(ADJECTIVES)}_{random.choice(SURNAMES)}"
        if name not in taken:
            return name
        name = f"{name}{random.randint(0, 9)}"
        if name not in taken:
            return name
