"""Simple generated English text: movie-review sentences and short articles with a TL;DR.

Used to train the shipped tokenizer (so sentiment and summary examples tokenize sensibly)
and available to examples that need plain-language text. Everything is deterministic given
the :class:`random.Random` passed in. Pure Python.
"""

from __future__ import annotations

import random

__all__ = [
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "article",
    "plain_sentence",
    "review",
]

POSITIVE_WORDS: tuple[str, ...] = (
    "great", "wonderful", "amazing", "excellent", "brilliant", "delightful", "beautiful", "charming",
    "funny", "moving", "clever", "fantastic", "superb", "enjoyable", "touching", "fresh", "good",
    "lovely", "perfect", "strong", "warm", "smart", "fun", "best",
)  # fmt: skip
"""Positive words used in generated reviews."""

NEGATIVE_WORDS: tuple[str, ...] = (
    "terrible", "awful", "boring", "dull", "bad", "poor", "weak", "predictable", "slow", "messy",
    "painful", "disappointing", "confusing", "bland", "forgettable", "silly", "flat", "cheap",
    "worst", "annoying", "tired", "empty", "ugly", "lazy",
)  # fmt: skip
"""Negative words used in generated reviews."""

_FILMS = ("movie", "film", "show", "story", "series", "picture", "sequel", "comedy", "drama", "thriller")
_ASPECTS = (
    "acting", "story", "plot", "music", "ending", "script", "cast", "dialogue", "camera work", "characters",
    "soundtrack", "pacing", "direction", "visuals", "lead actor", "lead actress", "first hour", "final scene",
    "humor", "special effects",
)  # fmt: skip
_ADVERBS = ("really", "very", "truly", "quite", "so", "pretty", "rather", "simply", "always", "just")
_NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo", "Maria",
    "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tom", "Vera",
)  # fmt: skip
_CITIES = (
    "Springfield", "Riverton", "Lakeside", "Oakwood", "Hillview", "Northport", "Westfield", "Greenville",
    "Bayside", "Fairmont",
)  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ANIMALS = ("cat", "dog", "bird", "horse", "fox", "rabbit", "mouse", "cow", "sheep", "duck")
_PLACES = ("park", "garden", "river", "house", "school", "market", "forest", "beach", "city", "road")
_THINGS = ("book", "ball", "letter", "apple", "phone", "box", "chair", "window", "door", "table")
_VERBS_PAST = ("found", "saw", "lost", "took", "bought", "opened", "closed", "moved", "liked", "carried")
_ADJECTIVES = ("small", "big", "old", "new", "red", "blue", "green", "quiet", "happy", "little", "long", "bright")
_TIMES = ("in the morning", "at night", "after lunch", "on the weekend", "every day", "last week", "yesterday")


def _positive(rng: random.Random) -> bool:
    return rng.random() < 0.5


def review(rng: random.Random, positive: bool | None = None) -> tuple[str, bool]:
    """Return ``(text, is_positive)``: a one or two sentence movie review."""
    if positive is None:
        positive = _positive(rng)
    words = POSITIVE_WORDS if positive else NEGATIVE_WORDS
    w1, w2 = rng.choice(words), rng.choice(words)
    film, aspect, other = rng.choice(_FILMS), rng.choice(_ASPECTS), rng.choice(_ASPECTS)
    adv = rng.choice(_ADVERBS)
    verb = (
        rng.choice(("loved", "enjoyed", "liked", "adored"))
        if positive
        else rng.choice(("hated", "disliked", "regretted", "could not stand"))
    )
    templates = (
        f"This {film} was {adv} {w1}.",
        f"The {aspect} was {w1} and the {other} was {w2}.",
        f"I {verb} this {film}. The {aspect} is {adv} {w1}.",
        f"What a {w1} {film}! The {aspect} was {w2}.",
        f"{rng.choice(_NAMES)} said the {film} was {w1}, and I agree: the {aspect} is {adv} {w2}.",
        f"A {w1} {film} with a {w2} {aspect}.",
        f"Honestly, the {aspect} was {w1}. I {verb} it.",
        f"We watched it {rng.choice(_TIMES)} and the {aspect} was {adv} {w1}.",
        f"The {film} is {w1}, {w2} and {rng.choice(words)}.",
        f"I would give it {rng.randint(7, 10) if positive else rng.randint(1, 5)} out of 10. The {aspect} was {w1}.",
    )
    return rng.choice(templates), positive


def plain_sentence(rng: random.Random) -> str:
    """Return a simple English sentence about everyday things."""
    name, animal, place = rng.choice(_NAMES), rng.choice(_ANIMALS), rng.choice(_PLACES)
    thing, verb, adj, time = rng.choice(_THINGS), rng.choice(_VERBS_PAST), rng.choice(_ADJECTIVES), rng.choice(_TIMES)
    templates = (
        f"The {adj} {animal} went to the {place} {time}.",
        f"{name} {verb} a {adj} {thing} near the {place}.",
        f"{name} and {rng.choice(_NAMES)} walked to the {place} {time}.",
        f"There is a {adj} {thing} on the {rng.choice(_THINGS)}.",
        f"A {animal} {verb} the {thing} {time}.",
        f"Where is the {adj} {thing}? It is in the {place}.",
        f"{name} has {rng.randint(2, 12)} {animal}s and a {adj} {thing}.",
        f"It was {rng.choice(('cold', 'warm', 'sunny', 'rainy', 'windy'))} in {rng.choice(_CITIES)} {time}.",
        f"Hello {name}! How are you {rng.choice(('today', 'doing', 'feeling'))}?",
        f"Can you tell me where the {place} is? Thank you very much.",
        f"Please help me find my {thing}. I think I left it at the {place}.",
        f"Yes, I know. The {thing} is {adj}, but it is not mine.",
        f"Why did the {animal} leave the {place}? Nobody knows.",
    )
    return rng.choice(templates)


def article(rng: random.Random) -> tuple[str, str]:
    """Return ``(article, summary)``: a short news-like text of a few sentences and a one-line summary."""
    city, day, name = rng.choice(_CITIES), rng.choice(_DAYS), rng.choice(_NAMES)
    number, year = rng.randint(2, 900), rng.randint(1990, 2030)
    kind = rng.randrange(4)
    if kind == 0:
        place = rng.choice(_PLACES)
        body = (
            f"The city council of {city} voted on {day} to build a new {place}. "
            f"The project will cost {number} thousand dollars and should be finished by {year}. "
            f"Mayor {name} said the town had waited a long time for it."
        )
        summary = f"{city} will build a new {place} by {year}."
    elif kind == 1:
        other = rng.choice([c for c in _CITIES if c != city])
        a, b = rng.randint(0, 6), rng.randint(0, 6)
        winner, loser = (city, other) if a >= b else (other, city)
        body = (
            f"On {day}, the {city} team played against {other} in front of {number} fans. "
            f"The final score was {max(a, b)} to {min(a, b)}. "
            f"Coach {name} said the players worked very hard this season."
        )
        summary = f"{winner} beat {loser} {max(a, b)} to {min(a, b)}."
    elif kind == 2:
        animal = rng.choice(_ANIMALS)
        body = (
            f"Scientists in {city} found that a {animal} can remember a face for {number} days. "
            f"The study, led by {name}, followed {rng.randint(5, 60)} animals for {rng.randint(2, 9)} years. "
            f"The team plans to publish more results in {year}."
        )
        summary = f"A study says a {animal} can remember a face for {number} days."
    else:
        weather = rng.choice(("heavy rain", "strong wind", "snow", "a heat wave", "thick fog"))
        body = (
            f"People in {city} should expect {weather} on {day}. "
            f"Schools may close and {number} flights could be late. "
            f"{name}, who works at the weather office, asked everyone to stay safe."
        )
        summary = f"{city} expects {weather} on {day}."
    return body, summary
