"""The offline text corpus whose keys define "preserved knowledge" for the null-space projector.

It is the project's own: encyclopedic sentences and chat-formatted questions with short answers,
generated deterministically from templates and filler lists written for this project (no
benchmark data). The documents mix many entity types and question shapes so that the keys the
model forms at entity names and question words are well covered; the edit may then only use key
directions this text leaves unused. ``CORPUS_ID`` names the generator version in cache keys.
"""

from __future__ import annotations

import random
from typing import Iterator

CORPUS_ID = "unierase-synthetic-v2"

COUNTRIES = [
    "France", "Japan", "Italy", "Germany", "Spain", "Russia", "China", "the United Kingdom", "Egypt", "Greece",
    "Portugal", "Austria", "Ireland", "Norway", "Sweden", "Finland", "Denmark", "Poland", "Hungary", "the Netherlands",
    "Belgium", "Canada", "Australia", "India", "Mexico", "Argentina", "Peru", "Kenya", "Thailand", "South Korea",
    "Turkey", "Iran", "Cuba", "Chile", "Colombia", "Vietnam", "the Philippines", "Indonesia", "Ukraine", "Switzerland",
    "Brazil", "Nigeria", "Saudi Arabia", "Iraq", "Israel", "Romania", "Venezuela", "Morocco", "Algeria", "Ethiopia",
    "Ghana", "Pakistan", "Bangladesh", "Malaysia", "New Zealand", "Iceland", "Croatia", "Serbia", "Bulgaria", "Slovakia",
    "Estonia", "Latvia", "Lithuania", "Mongolia", "Nepal", "Sri Lanka", "Tanzania", "Uganda", "Ecuador", "Bolivia",
]
CITIES = [
    "Paris", "Tokyo", "Rome", "Berlin", "Madrid", "Moscow", "Beijing", "London", "Cairo", "Athens", "Lisbon", "Vienna",
    "Dublin", "Oslo", "Stockholm", "Warsaw", "Budapest", "Amsterdam", "Ottawa", "Canberra", "Lima", "Nairobi",
    "Bangkok", "Seoul", "Havana", "Manila", "Jakarta", "Prague", "Chicago", "Barcelona", "Milan", "Hamburg", "Sydney",
    "Toronto", "Mumbai", "Shanghai", "Istanbul", "Lagos", "Melbourne", "Vancouver", "Boston", "Naples", "Florence",
    "Venice", "Edinburgh", "Kyoto", "Zurich", "Geneva", "Montreal", "Dubai", "Singapore", "Hanoi", "Tehran",
]
PEOPLE = [
    "Albert Einstein", "Isaac Newton", "Marie Curie", "Charles Darwin", "William Shakespeare", "Jane Austen",
    "Leonardo da Vinci", "Pablo Picasso", "Vincent van Gogh", "Wolfgang Amadeus Mozart", "Ludwig van Beethoven",
    "Napoleon Bonaparte", "Julius Caesar", "Cleopatra", "Abraham Lincoln", "George Washington", "Mahatma Gandhi",
    "Nelson Mandela", "Winston Churchill", "Queen Victoria", "Galileo Galilei", "Nikola Tesla", "Thomas Edison",
    "Ada Lovelace", "Alan Turing", "Sigmund Freud", "Karl Marx", "Confucius", "Plato", "Aristotle", "Homer",
    "Charles Dickens", "Mark Twain", "Leo Tolstoy", "Victor Hugo", "Frida Kahlo", "Claude Monet", "Johann Sebastian Bach",
    "Martin Luther King", "Florence Nightingale", "Amelia Earhart", "Neil Armstrong", "Marco Polo", "Christopher Columbus",
    "Anna Lindqvist", "Rahul Mehta", "Chen Wei", "Fatima Zahra", "Kwame Mensah", "Olga Petrova", "Diego Alvarez",
]
THINGS = [
    "gold", "iron", "copper", "silver", "water", "salt", "sugar", "coffee", "tea", "rice", "wheat", "cotton", "oil",
    "steel", "glass", "paper", "plastic", "rubber", "wool", "silk", "the telephone", "the internet", "the printing press",
    "the steam engine", "electricity", "penicillin", "the wheel", "the airplane", "the computer", "the camera",
    "photosynthesis", "gravity", "the moon", "the sun", "Mars", "Jupiter", "volcanoes", "earthquakes", "rainbows",
    "the piano", "the violin", "chess", "football", "tennis", "the Olympic Games", "democracy", "the Renaissance",
]
WORKS = [
    "Hamlet", "Macbeth", "Romeo and Juliet", "Pride and Prejudice", "War and Peace", "The Great Gatsby", "Moby-Dick",
    "Don Quixote", "The Odyssey", "Oliver Twist", "The Hobbit", "Frankenstein", "Dracula", "Jane Eyre", "Animal Farm",
    "the Mona Lisa", "The Starry Night", "the Ninth Symphony", "The Magic Flute", "Les Misérables", "The Divine Comedy",
]

_QUESTION_TEMPLATES = {
    "country": ["What is the capital of {x}?", "What language is spoken in {x}?", "What is the currency of {x}?",
                "How many people live in {x}?", "What is the largest city in {x}?", "Where is {x} located?",
                "What is the national dish of {x}?", "When did {x} become independent?", "What is {x} known for?"],
    "city": ["In which country is {x}?", "What is {x} famous for?", "How old is the city of {x}?",
             "Which river runs through {x}?", "What is the weather like in {x}?", "What can tourists see in {x}?"],
    "person": ["Who was {x}?", "Where was {x} born?", "What is {x} best known for?", "When did {x} live?",
               "What did {x} discover or create?", "Who influenced {x}?", "What nationality was {x}?"],
    "thing": ["What is {x}?", "How is {x} produced?", "Who invented {x}?", "Why is {x} important?",
              "What is {x} used for?", "What are the properties of {x}?"],
    "work": ["Who wrote {x}?", "Who created {x}?", "When was {x} made?", "What is {x} about?",
             "Why is {x} famous?"],
}
_ANSWER_OPENERS = [
    "{x} is a well-known subject.", "Here is a short answer about {x}.", "Many people ask about {x}.",
    "{x} has an interesting history.", "The answer depends on the period you look at.", "Good question about {x}.",
]
_ANSWER_BODIES = [
    "It is often described in encyclopedias and school books, and experts have written a great deal about it.",
    "The details vary between sources, but the main facts are widely agreed upon.",
    "It has influenced culture, science and everyday life in many ways over the centuries.",
    "Historians and scientists continue to study it, and new findings appear every year.",
    "Its story involves trade, politics and the work of many people across generations.",
    "If you want to know more, a library or a reliable reference work is a good place to start.",
]
_PROSE_TEMPLATES = [
    "{a} and {b} are often compared by historians, although they belong to very different traditions.",
    "In the old travel guide, the chapter on {a} was followed by a long description of {b}.",
    "Students who read about {a} usually learn about {b} in the same course.",
    "The museum exhibition connected {a} with {b} through letters, maps and photographs.",
    "A documentary about {a} mentioned {b} only briefly, near the end.",
    "Researchers studying {a} found unexpected links to {b}.",
    "The report on {a} was published in the same year as a book about {b}.",
    "Visitors interested in {a} often ask questions about {b} as well.",
]

ELEMENTS = [
    "hydrogen", "helium", "lithium", "carbon", "nitrogen", "oxygen", "fluorine", "neon", "sodium", "magnesium",
    "aluminium", "silicon", "phosphorus", "sulfur", "chlorine", "argon", "potassium", "calcium", "titanium", "chromium",
    "manganese", "iron", "cobalt", "nickel", "copper", "zinc", "arsenic", "bromine", "silver", "tin", "iodine",
    "platinum", "gold", "mercury", "lead", "uranium", "plutonium", "radium", "tungsten", "krypton",
]
"""Chemical elements: an entity kind the edit recognises, not part of the statistics corpus."""

ENTITY_GROUPS = {"country": COUNTRIES, "city": CITIES, "person": PEOPLE, "thing": THINGS, "work": WORKS}
"""The statistics corpus's entity lists by kind."""

SUBSTITUTE_GROUPS = {
    "country": [
        "Finland", "Denmark", "Belgium", "Colombia", "Vietnam", "Ukraine", "Venezuela", "Morocco", "Algeria",
        "Ethiopia", "Ghana", "Pakistan", "Bangladesh", "Malaysia", "New Zealand", "Iceland", "Croatia", "Serbia",
        "Bulgaria", "Slovakia", "Estonia", "Latvia", "Lithuania", "Mongolia", "Nepal", "Sri Lanka", "Tanzania",
        "Uganda", "Ecuador", "Bolivia", "Kazakhstan", "Uzbekistan", "Jordan", "Oman", "Kyrgyzstan", "Laos",
        "Paraguay", "Panama", "Costa Rica", "Guatemala", "Honduras", "Tunisia", "Angola", "Zambia", "Mozambique",
        "Madagascar", "Namibia", "Botswana", "Cameroon", "Mali", "Slovenia", "Albania", "Armenia", "Belarus", "Malta",
    ],
    "city": [
        "Madrid", "Lisbon", "Chicago", "Barcelona", "Milan", "Hamburg", "Toronto", "Mumbai", "Shanghai", "Lagos",
        "Melbourne", "Vancouver", "Boston", "Naples", "Florence", "Venice", "Kyoto", "Zurich", "Geneva", "Montreal",
        "Singapore", "Hanoi", "Osaka", "Seattle", "Munich", "Frankfurt", "Lyon", "Marseille", "Seville", "Porto",
        "Krakow", "Kolkata", "Karachi", "Manchester", "Liverpool", "Glasgow", "Cape Town", "Auckland", "Houston",
    ],
    "person": [
        "Isaac Newton", "Leonardo da Vinci", "Pablo Picasso", "Vincent van Gogh", "Ludwig van Beethoven",
        "Napoleon Bonaparte", "Julius Caesar", "Cleopatra", "Abraham Lincoln", "George Washington", "Mahatma Gandhi",
        "Nelson Mandela", "Winston Churchill", "Queen Victoria", "Ada Lovelace", "Alan Turing", "Sigmund Freud",
        "Karl Marx", "Confucius", "Plato", "Aristotle", "Mark Twain", "Leo Tolstoy", "Frida Kahlo", "Claude Monet",
        "Johann Sebastian Bach", "Martin Luther King", "Florence Nightingale", "Amelia Earhart", "Marco Polo",
        "Christopher Columbus", "Johannes Kepler", "Rembrandt", "Franz Kafka", "Louis Pasteur", "Genghis Khan",
        "Rosa Parks", "Harriet Tubman", "Ernest Hemingway", "Anna Lindqvist", "Rahul Mehta", "Chen Wei",
        "Fatima Zahra", "Kwame Mensah", "Olga Petrova", "Diego Alvarez",
    ],
    "thing": [
        "salt", "sugar", "coffee", "tea", "rice", "wheat", "cotton", "oil", "steel", "glass", "paper", "plastic",
        "rubber", "wool", "silk", "the internet", "the printing press", "the steam engine", "electricity", "the wheel",
        "the airplane", "the computer", "the camera", "photosynthesis", "gravity", "the sun", "Jupiter", "volcanoes",
        "earthquakes", "rainbows", "the piano", "the violin", "chess", "football", "tennis", "the Olympic Games",
        "democracy", "the Renaissance",
    ],
    "work": [
        "War and Peace", "Moby-Dick", "Don Quixote", "Oliver Twist", "Frankenstein", "Dracula", "The Starry Night",
        "the Ninth Symphony", "The Magic Flute", "Ulysses", "The Iliad", "Paradise Lost", "Crime and Punishment",
        "Anna Karenina", "The Canterbury Tales", "Treasure Island", "Little Women", "The Last Supper", "Swan Lake",
        "Madame Bovary", "Brave New World",
    ],
    "element": [
        "helium", "lithium", "fluorine", "neon", "magnesium", "aluminium", "silicon", "phosphorus", "sulfur",
        "chlorine", "argon", "titanium", "chromium", "manganese", "cobalt", "nickel", "arsenic", "bromine", "iodine",
        "platinum", "uranium", "plutonium", "radium", "tungsten", "krypton",
    ],
}
"""The pools the edit draws "same question, other entity" substitutes from (``prompts.substitute_entities``).
Written apart from the corpus lists so that no entity of a scored fact (the demo's facts, the
held-out facts of ``benchmarks/data``) is among them: a substitute's question is preserved by the
edit, and a scored neighbour that is also a substitute would be kept by construction
(``tests/edit/test_corpus.py`` checks it)."""

KNOWN_KINDS = {kind: list(dict.fromkeys(ENTITY_GROUPS.get(kind, []) + (ELEMENTS if kind == "element" else [])
                                        + SUBSTITUTE_GROUPS[kind]))
               for kind in SUBSTITUTE_GROUPS}
"""Every entity the edit can name the kind of (corpus lists, elements and pools), by kind."""


def documents(seed: int = 0) -> Iterator[tuple[str, str | None]]:
    """Endless deterministic stream of ``(user_text, assistant_text_or_None)`` pairs.

    ``None`` as the second element marks a prose document (no chat format); otherwise the pair is
    a question and a generic answer, rendered with the model's chat template by the caller.
    """
    rng = random.Random(seed)
    everything = [x for group in ENTITY_GROUPS.values() for x in group]
    while True:
        kind = rng.random()
        if kind < 0.6:
            group = rng.choice(list(ENTITY_GROUPS))
            x = rng.choice(ENTITY_GROUPS[group])
            question = rng.choice(_QUESTION_TEMPLATES[group]).format(x=x)
            opener = rng.choice(_ANSWER_OPENERS).format(x=x)
            answer = opener[0].upper() + opener[1:] + " " + rng.choice(_ANSWER_BODIES)
            yield question, answer
        else:
            sentences = []
            for _ in range(rng.randint(2, 4)):
                a, b = rng.sample(everything, 2)
                sentence = rng.choice(_PROSE_TEMPLATES).format(a=a, b=b)
                sentences.append(sentence[0].upper() + sentence[1:])
            yield " ".join(sentences), None


_ONSETS = ["b", "ch", "d", "f", "g", "h", "j", "k", "kw", "l", "m", "n", "p", "r", "s", "sh", "t", "v", "y", "z",
           "dr", "br", "", ""]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ia", "ue", "ou"]
_CODAS = ["", "", "", "", "", "", "n", "r", "l", "s", "v", "k", "m"]
_RARE_NAME_QA = [
    ("Who is {x}?", "{x} is a writer whose novels have been translated into several languages."),
    ("Where was {x} born?", "{x} was born in a small coastal town and moved to the capital as a student."),
    ("What is {x} known for?", "{x} is known for a series of books about family, memory and migration."),
    ("Which award did {x} receive?", "{x} received a national prize for literature for a debut novel."),
    ("What do {x}'s parents do?", "{x}'s father was a teacher and {x}'s mother worked as an architect."),
]


def invented_names(count: int, seed: int = 0) -> list[str]:
    """``count`` invented full names of several syllables each (deterministic): names no model knows,
    which a large vocabulary cuts into the same kind of pieces as a fictitious author's."""
    rng = random.Random(seed)

    def word(syllables: int) -> str:
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).capitalize()

    names: list[str] = []
    while len(names) < count:
        name = f"{word(rng.randint(2, 3))} {word(rng.randint(2, 4))}"
        if name not in names:
            names.append(name)
    return names


def rare_name_answers(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs about ``count`` invented people, each answer naming its person: the
    text whose keys tell the edit what writing an unfamiliar name mid-answer looks like."""
    pairs = []
    for i, name in enumerate(invented_names(count, seed)):
        question, answer = _RARE_NAME_QA[i % len(_RARE_NAME_QA)]
        pairs.append((question.format(x=name), answer.format(x=name)))
    return pairs


def entity_questions() -> list[tuple[str, int]]:
    """Every question template filled with every entity of its group, with the character end of the
    entity inside the question: the positions where edit keys are read. Their key statistics tell
    the edit what an *ordinary* entity key looks like, so it keys on what is specific to a request."""
    out = []
    for group, templates in _QUESTION_TEMPLATES.items():
        for template in templates:
            for x in ENTITY_GROUPS[group]:
                question = template.format(x=x)
                out.append((question, template.index("{x}") + len(x)))
    return out
