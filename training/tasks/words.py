"""Word lists of the wide synthetic task: hundreds of first names (with the pronoun each takes)
and countable objects, the fixed part of each held out of training, and made-up words.

A word is held out when a stable hash of it says so (about one in five), so the split does not
depend on list order and adding a word never moves another across it. The everyday words a new
user tries first (`COMMON_NAMES`, `COMMON_OBJECTS`: Tom, Sara, apples, marbles, ...) are never
held out. Made-up words (`made_up_name`, `made_up_object`) are drawn from random syllables, so a
model trained on them learns to copy a word it never saw; the same hash splits them into a
training part and a held-out part, so a made-up evaluation word is one no training question has.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

MALE_NAMES: tuple[str, ...] = (
    "Aaron", "Abdul", "Adam", "Adrian", "Ahmed", "Alan", "Albert", "Alex", "Alfie", "Ali",
    "Amir", "Andre", "Andrew", "Angus", "Anton", "Archie", "Arjun", "Arthur", "Asher", "Austin",
    "Axel", "Barry", "Basil", "Ben", "Benito", "Bernard", "Blake", "Boris", "Brad", "Brian",
    "Bruno", "Caleb", "Callum", "Carl", "Carlos", "Casey", "Cedric", "Chen", "Chris", "Clark",
    "Colin", "Connor", "Cyrus", "Dale", "Damian", "Daniel", "Dante", "Darius", "David", "Dean",
    "Derek", "Diego", "Dmitri", "Dylan", "Eddie", "Edgar", "Eli", "Elias", "Emil", "Enzo",
    "Eric", "Ethan", "Evan", "Felix", "Fergus", "Finn", "Frank", "Fred", "Gabriel", "Gavin",
    "George", "Gideon", "Glen", "Gordon", "Graham", "Hamid", "Hans", "Harold", "Harry", "Hector",
    "Henry", "Hiro", "Hugo", "Ian", "Igor", "Isaac", "Ivan", "Jack", "Jacob", "Jake", "James",
    "Jamal", "Jason", "Javier", "Jay", "Joel", "John", "Jonah", "Jorge", "Joseph", "Juan",
    "Julian", "Kai", "Karim", "Karl", "Kenji", "Kevin", "Kofi", "Kurt", "Lars", "Leo", "Leon",
    "Liam", "Logan", "Louis", "Luca", "Lucas", "Luis", "Luke", "Malik", "Marco", "Mark",
    "Martin", "Mason", "Mateo", "Max", "Miguel", "Milo", "Mohan", "Nathan", "Neil", "Nico",
    "Noah", "Oliver", "Omar", "Oscar", "Otto", "Owen", "Pablo", "Patrick", "Paul", "Pedro",
    "Peter", "Philip", "Quentin", "Rafael", "Rahul", "Ravi", "Ray", "Rex", "Ricardo", "Robert",
    "Roger", "Roman", "Rory", "Ryan", "Sam", "Samir", "Sean", "Sergio", "Simon", "Stefan",
    "Steve", "Tariq", "Ted", "Theo", "Thomas", "Tim", "Tobias", "Tom", "Tony", "Tyler",
    "Victor", "Vikram", "Walter", "Wesley", "Will", "Xavier", "Yusuf", "Zach", "Zane", "Bob",
    "Mike", "Joe", "Jim", "Bill", "Tommy",
)  # fmt: skip
FEMALE_NAMES: tuple[str, ...] = (
    "Abby", "Ada", "Adele", "Agnes", "Aisha", "Alice", "Alma", "Amber", "Amelia", "Amy", "Ana",
    "Andrea", "Angela", "Anita", "Ann", "Anna", "Astrid", "Ava", "Beatrice", "Bella", "Beth",
    "Bianca", "Brenda", "Camila", "Carla", "Carmen", "Carol", "Celia", "Chloe", "Clara",
    "Claire", "Daisy", "Dana", "Daria", "Diana", "Dora", "Edith", "Elena", "Eliza", "Ella",
    "Ellen", "Elsa", "Emily", "Emma", "Erin", "Esther", "Eva", "Fatima", "Fay", "Fiona",
    "Flora", "Frida", "Gemma", "Gina", "Grace", "Greta", "Hannah", "Harriet", "Hazel", "Heidi",
    "Helen", "Hilda", "Holly", "Ida", "Ines", "Ingrid", "Iris", "Isabel", "Isla", "Ivy",
    "Jade", "Jane", "Janet", "Jasmine", "Jenna", "Jessica", "Joan", "Julia", "June", "Kara",
    "Karen", "Kate", "Keiko", "Kim", "Lana", "Laura", "Layla", "Lea", "Leila", "Lena", "Lily",
    "Linda", "Lisa", "Lola", "Lucia", "Lucy", "Luna", "Lydia", "Mabel", "Maria", "Marta",
    "Maya", "Megan", "Mei", "Mia", "Mila", "Mina", "Miriam", "Molly", "Nadia", "Nancy", "Naomi",
    "Nell", "Nina", "Nora", "Olga", "Olive", "Olivia", "Paula", "Pearl", "Penny", "Petra",
    "Phoebe", "Pia", "Priya", "Rachel", "Rita", "Rosa", "Rose", "Ruby", "Ruth", "Sabrina",
    "Sadie", "Sara", "Selma", "Sofia", "Sonia", "Stella", "Susan", "Sylvia", "Tara", "Tess",
    "Thea", "Tina", "Uma", "Una", "Vera", "Vicky", "Viola", "Wanda", "Wendy", "Yara", "Yasmin",
    "Yuki", "Zara", "Zoe", "Zora", "Sarah", "Mary", "Betty", "Kelly", "Jenny",
)  # fmt: skip
# Plural countable nouns, one word each (reference steps end with the object's name).
OBJECTS: tuple[str, ...] = (
    "acorns", "apples", "apricots", "badges", "bagels", "balloons", "balls", "bananas",
    "bangles", "baskets", "beads", "beans", "bells", "berries", "bikes", "biscuits", "blocks",
    "bolts", "bones", "books", "boots", "bottles", "bowls", "boxes", "bracelets", "bricks",
    "brushes", "buckets", "buns", "buttons", "cakes", "candles", "candies", "caps", "cards",
    "carrots", "cars", "cherries", "chairs", "chestnuts", "chips", "clips", "coins", "combs",
    "cones", "cookies", "corks", "crackers", "crayons", "crystals", "cubes", "cupcakes", "cups",
    "daisies", "dice", "dolls", "donuts", "drums", "ducks", "eggs", "envelopes", "erasers",
    "feathers", "figs", "flags", "flowers", "folders", "forks", "frogs", "gems", "gloves",
    "grapes", "guitars", "hats", "helmets", "jars", "jellybeans", "jewels", "keys", "kites",
    "knots", "ladders", "lamps", "leaves", "lemons", "letters", "lilies", "limes", "locks",
    "magnets", "mangoes", "maps", "marbles", "masks", "medals", "melons", "mittens", "mugs",
    "muffins", "mushrooms", "nails", "napkins", "necklaces", "needles", "notebooks", "nuts",
    "onions", "oranges", "ornaments", "paintings", "pancakes", "pans", "peaches", "peanuts",
    "pearls", "pears", "pebbles", "pencils", "pens", "peppers", "photos", "pies", "pillows",
    "pins", "plates", "plums", "postcards", "posters", "potatoes", "pots", "pretzels",
    "puppets", "puzzles", "quilts", "rackets", "radishes", "raisins", "ribbons", "rings",
    "robots", "rocks", "roses", "rulers", "sandwiches", "scarves", "scissors", "seashells",
    "seeds", "shells", "shirts", "shoes", "skates", "snacks", "socks", "spoons", "stamps",
    "stars", "stickers", "stones", "straws", "strawberries", "sweets", "tacos", "tickets",
    "tiles", "tomatoes", "tools", "towels", "toys", "trains", "trophies", "trucks", "tulips",
    "vases", "wagons", "walnuts", "whistles", "wreaths", "yoyos",
)  # fmt: skip
# Containers for "Ann has 3 boxes of 12 pencils".
CONTAINERS: tuple[str, ...] = ("boxes", "bags", "packs", "jars", "crates", "baskets")

PRONOUNS = {"he": "his", "she": "her"}  # subject -> possessive


# The words a new user writes first: always in training, never held out.
COMMON_NAMES: frozenset[str] = frozenset(
    ("Tom", "Sara", "Sarah", "John", "Mary", "Ann", "Anna", "Bob", "Mike", "Joe", "Jim", "Sam",
     "Ben", "Jack", "Lucy", "Emma", "Amy", "Alice", "Kate", "Lisa", "Tim", "Mia", "Max", "Leo",
     "David", "James", "Maria", "Linda", "Peter", "Paul", "Jenny", "Betty", "Kelly", "Bill")
)  # fmt: skip
COMMON_OBJECTS: frozenset[str] = frozenset(
    ("apples", "marbles", "cookies", "pencils", "books", "oranges", "candies", "stickers",
     "balloons", "cards", "toys", "eggs", "cupcakes", "pens", "crayons", "flowers", "shells",
     "stamps", "coins", "bananas", "cars", "balls", "dolls", "muffins", "candles", "cakes")
)  # fmt: skip


def held_out(word: str) -> bool:
    """Whether `word` belongs to the held-out part of its list (about one word in five; never an
    everyday word of `COMMON_NAMES` or `COMMON_OBJECTS`)."""
    if word in COMMON_NAMES or word in COMMON_OBJECTS:
        return False
    return hashlib.sha256(f"glore-heldout:{word}".encode()).digest()[0] % 5 == 0


def _people() -> dict[str, str]:
    people = {n: "he" for n in MALE_NAMES}
    people.update({n: "she" for n in FEMALE_NAMES})
    if len(people) != len(MALE_NAMES) + len(FEMALE_NAMES):
        raise AssertionError("a name is listed under both pronouns")
    return people


PEOPLE: dict[str, str] = _people()  # name -> subject pronoun
TRAIN_NAMES = tuple(n for n in PEOPLE if not held_out(n))
HELDOUT_NAMES = tuple(n for n in PEOPLE if held_out(n))
TRAIN_OBJECTS = tuple(o for o in OBJECTS if not held_out(o))
HELDOUT_OBJECTS = tuple(o for o in OBJECTS if held_out(o))


# Made-up words: two or three syllables of an onset and a vowel, sometimes closed by a coda.
_ONSETS = (
    "b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
    "br", "ch", "cl", "dr", "fl", "gr", "kr", "pl", "sh", "sk", "st", "th", "tr", "y",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ee", "ou", "oo", "ei")
_CODAS = ("", "", "", "", "n", "r", "l", "m", "s", "k", "t", "nd", "rk", "ck")
_REAL_WORDS = frozenset(w.lower() for w in (*MALE_NAMES, *FEMALE_NAMES, *OBJECTS, *CONTAINERS))


def _made_up_stem(rng: random.Random) -> str:
    syllables = rng.choice((2, 2, 3))
    return "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)
    ) + rng.choice(_CODAS)


def _made_up(rng: random.Random, heldout: bool, shape: Callable[[str], str]) -> str:
    """A made-up word of the training part (`heldout=False`) or of the held-out part, never a
    real word of these lists."""
    while True:
        word = shape(_made_up_stem(rng))
        if word.lower() not in _REAL_WORDS and held_out(word) == heldout:
            return word


def made_up_name(rng: random.Random, *, heldout: bool = False) -> str:
    """A capitalised made-up first name ("Brelio", "Tashumek")."""
    return _made_up(rng, heldout, str.capitalize)


def made_up_object(rng: random.Random, *, heldout: bool = False) -> str:
    """A lower-case made-up plural noun ("glorps", "vintaks")."""
    return _made_up(
        rng, heldout, lambda stem: stem + ("es" if stem.endswith(("s", "sh", "ch")) else "s")
    )
