"""A generated corpus of short movie reviews for pretraining the embedded tiny model.

The corpus is written by a small random grammar, so anyone can rebuild the model without a
download. Reviews have a wide vocabulary (titles, names, genres, places, plot events, aspects of a
film and many sentiment words) and a polarity drawn per review: positive, negative or mixed. This
gives the controlled-sentiment experiment of the DPO paper (Rafailov et al., 2023, §6.1) room to
move: a model trained on the corpus continues a review prompt with either sentiment.

A share of the documents is written as a chat turn (a user asks about a film, the assistant
answers with a review) so that chat-formatted preference data is meaningful for the model.
"""

from __future__ import annotations

import random

TITLE_FIRST = (
    "Silent", "Midnight", "Golden", "Broken", "Hidden", "Crimson", "Distant", "Frozen", "Lonely",
    "Burning", "Secret", "Quiet", "Wild", "Electric", "Paper", "Glass", "Iron", "Velvet", "Summer",
    "Winter", "Autumn", "Northern", "Endless", "Last", "Little", "Bright", "Dark", "Falling",
    "Wandering", "Restless", "Hollow", "Painted", "Stolen", "Sleeping", "Rising", "Ancient",
)
TITLE_SECOND = (
    "River", "Garden", "Harbor", "Lights", "Empire", "Station", "Kingdom", "Letters", "Mountain",
    "Horizon", "Shadows", "Waves", "Road", "Orchard", "Bridge", "Island", "Tower", "Forest",
    "Highway", "Carnival", "Lantern", "Voyage", "Machine", "Parade", "Valley", "Mirror", "Echoes",
    "Desert", "Circus", "Hotel", "Frontier", "Window", "Compass", "Storm", "Theater", "Sparrow",
)
FIRST_NAMES = (
    "Anna", "Marco", "Elena", "David", "Sofia", "James", "Lucy", "Omar", "Clara", "Victor", "Maya",
    "Peter", "Rosa", "Hugo", "Nina", "Samuel", "Irene", "Felix", "Greta", "Daniel", "Leila",
    "Thomas", "Olivia", "Jonas", "Mira", "Oscar", "Ruth", "Pablo", "Alice", "Henry",
)
LAST_NAMES = (
    "Moreau", "Keller", "Brandt", "Costa", "Novak", "Walsh", "Ferreira", "Lindqvist", "Okafor",
    "Tanaka", "Rossi", "Harper", "Duval", "Mendes", "Fischer", "Quinn", "Sato", "Bianchi",
    "Larsen", "Grant", "Ivanova", "Baker", "Romero", "Holt", "Nakamura",
)
GENRES = (
    "drama", "comedy", "thriller", "western", "musical", "horror film", "romance", "documentary",
    "mystery", "war epic", "animated feature", "science fiction story", "crime story",
    "family film", "adventure", "satire", "biopic", "fantasy tale", "period piece", "road movie",
)
ROLES = (
    "a young detective", "an old fisherman", "a retired teacher", "two sisters", "a lonely astronaut",
    "a small-town baker", "a stubborn farmer", "a famous singer", "a shy student", "a widowed doctor",
    "a street musician", "a tired soldier", "a clever thief", "a nervous pilot", "a kind nurse",
    "a young painter", "an ambitious lawyer", "a stray dog", "a group of friends", "a night guard",
)
EVENTS = (
    "searches for a lost letter", "returns home after the war", "falls in love with a stranger",
    "tries to save the family farm", "plans one last robbery", "solves a strange murder",
    "crosses the country by train", "opens a tiny restaurant", "hides a dangerous secret",
    "trains for a boxing match", "builds a boat from scratch", "looks for a missing brother",
    "escapes from a prison camp", "writes a novel about the sea", "learns to play the piano",
    "protects a village from bandits", "discovers a hidden tunnel", "runs for mayor",
)
PLACES = (
    "a quiet village", "Paris", "a crowded city", "a space station", "the desert", "a small island",
    "an old hotel", "the mountains", "a fishing town", "a snowy forest", "Rome", "a noisy market",
    "a lighthouse", "the suburbs", "a ruined castle", "a jazz club", "a farm in the valley",
)
ASPECTS = (
    "acting", "plot", "script", "dialogue", "cinematography", "soundtrack", "pacing", "ending",
    "editing", "cast", "special effects", "costumes", "score", "humor", "direction", "characters",
    "story", "photography", "final scene", "opening scene", "lead performance", "production design",
)
POSITIVE = (
    "brilliant", "wonderful", "superb", "charming", "delightful", "gorgeous", "moving", "clever",
    "gripping", "funny", "beautiful", "touching", "stunning", "excellent", "fantastic",
    "remarkable", "thrilling", "heartfelt", "witty", "powerful", "elegant", "inspiring", "fresh",
    "vivid", "memorable", "magnificent", "warm", "lovely", "joyful", "engaging", "captivating",
    "enchanting", "masterful", "entertaining", "hilarious", "tender", "smart", "great", "amazing",
    "outstanding", "splendid", "marvelous", "sincere", "uplifting", "impressive", "satisfying",
    "perfect", "graceful", "dazzling", "sweet",
)
NEGATIVE = (
    "dull", "boring", "awful", "terrible", "clumsy", "bland", "tedious", "lifeless", "confusing",
    "predictable", "messy", "flat", "weak", "painful", "ugly", "stupid", "lazy", "forgettable",
    "dreadful", "horrible", "annoying", "pointless", "shallow", "sloppy", "miserable", "poor",
    "bad", "disappointing", "tiresome", "cheap", "silly", "awkward", "hollow", "irritating",
    "pathetic", "dreary", "stale", "unbearable", "mediocre", "ridiculous", "worthless", "wooden",
    "incoherent", "sluggish", "joyless", "cold", "empty", "tasteless", "gloomy", "lousy",
)
ADVERBS = (
    "truly", "really", "very", "quite", "remarkably", "surprisingly", "genuinely", "deeply",
    "utterly", "simply", "incredibly", "rather", "consistently", "often", "mostly", "strangely",
)
FEELINGS_POSITIVE = ("moved", "delighted", "thrilled", "happy", "inspired", "grateful", "amazed")
FEELINGS_NEGATIVE = ("bored", "annoyed", "exhausted", "angry", "sad", "disappointed", "confused")
VERBS_POSITIVE = ("loved", "enjoyed", "adored", "savored", "admired", "treasured")
VERBS_NEGATIVE = ("hated", "regretted", "endured", "resented", "disliked", "suffered through")
VERDICTS_POSITIVE = (
    "Highly recommended.", "I would watch it again tomorrow.", "Go and see it.",
    "A real treat for the whole family.", "Easily the best film I have seen this year.",
    "It deserves every award it gets.", "Do not miss this one.",
)
VERDICTS_NEGATIVE = (
    "Do not waste your time.", "Skip this one.", "I want my money back.",
    "Easily the worst film I have seen this year.", "I fell asleep twice.",
    "It should never have been made.", "Avoid it at all costs.",
)
CHAT_REQUESTS = (
    "Write a short review of the movie {title}.",
    "What did you think of {title}?",
    "Can you review the film {title} for me?",
    "Tell me about the {genre} {title}.",
    "Give me your opinion of {title}.",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def movie_title(rng: random.Random) -> str:
    """A two-word film title, sometimes with a leading 'The'."""
    title = f"{rng.choice(TITLE_FIRST)} {rng.choice(TITLE_SECOND)}"
    return f"The {title}" if rng.random() < 0.4 else title


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _sentiment_sentence(rng: random.Random, positive: bool, title: str, genre: str) -> str:
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    adj2 = rng.choice(POSITIVE if positive else NEGATIVE)
    adverb = rng.choice(ADVERBS)
    aspect = rng.choice(ASPECTS)
    feeling = rng.choice(FEELINGS_POSITIVE if positive else FEELINGS_NEGATIVE)
    verb = rng.choice(VERBS_POSITIVE if positive else VERBS_NEGATIVE)
    templates = (
        f"The {aspect} is {adverb} {adj}.",
        f"The {aspect} was {adj} and the {rng.choice(ASPECTS)} was {adj2}.",
        f"{title} is {_article(adj)} {adj} {genre}.",
        f"{person(rng)} gives {_article(adj)} {adj} performance as {rng.choice(ROLES)}.",
        f"By the end I was {feeling}.",
        f"I {verb} every minute of it.",
        f"The {aspect} felt {adj}, and the whole thing is {adverb} {adj2}.",
        f"{person(rng)} directs with {_article(adj)} {adj} touch.",
        f"It is {_article(adj)} {adj}, {adj2} film.",
        f"Honestly, the {aspect} left me {feeling}.",
        rng.choice(VERDICTS_POSITIVE if positive else VERDICTS_NEGATIVE),
    )
    return rng.choice(templates)


def _plot_sentence(rng: random.Random, title: str, genre: str) -> str:
    templates = (
        f"The story follows {rng.choice(ROLES)} who {rng.choice(EVENTS)} in {rng.choice(PLACES)}.",
        f"{title} is {_article(genre)} {genre} about {rng.choice(ROLES)} in {rng.choice(PLACES)}.",
        f"In this {genre}, {rng.choice(ROLES)} {rng.choice(EVENTS)}.",
        f"{person(rng)} plays {rng.choice(ROLES)} who {rng.choice(EVENTS)}.",
        f"I watched {title} last {rng.choice(('night', 'week', 'weekend', 'month'))}.",
        f"It runs almost {rng.choice(('ninety', 'two', 'three'))} "
        f"{'minutes' if rng.random() < 0.3 else 'hours'} and is set in {rng.choice(PLACES)}.",
    )
    return rng.choice(templates)


MOODS = ("positive", "negative", "mixed")
"""A review's polarity: every sentiment sentence positive, every one negative, or each a coin flip."""


def review(rng: random.Random, title: str | None = None, genre: str | None = None, mood: str | None = None) -> str:
    """One review: a plot sentence or two, then sentiment sentences of one polarity or mixed (`mood`, one of
    `MOODS`; drawn at random when not given)."""
    title = title or movie_title(rng)
    genre = genre or rng.choice(GENRES)
    mood = mood or rng.choice(MOODS)
    sentences = [_plot_sentence(rng, title, genre)]
    if rng.random() < 0.3:
        sentences.append(_plot_sentence(rng, title, genre))
    for _ in range(rng.randint(2, 5)):
        positive = (mood == "positive") if mood != "mixed" else rng.random() < 0.5
        sentences.append(_sentiment_sentence(rng, positive, title, genre))
    return " ".join(sentences)


Document = str | list[dict[str, str]]


def chat_document(rng: random.Random) -> list[dict[str, str]]:
    """A user asks about a film; the assistant answers with a review."""
    title, genre = movie_title(rng), rng.choice(GENRES)
    request = rng.choice(CHAT_REQUESTS).format(title=title, genre=genre)
    return [
        {"role": "user", "content": request},
        {"role": "assistant", "content": review(rng, title, genre)},
    ]


def generate_corpus(n_documents: int, seed: int, chat_share: float = 0.3) -> list[Document]:
    """`n_documents` documents: plain reviews (str), and a `chat_share` of chat conversations."""
    rng = random.Random(seed)
    return [chat_document(rng) if rng.random() < chat_share else review(rng) for _ in range(n_documents)]


def review_prompts(n: int, seed: int) -> list[str]:
    """Openings of reviews for sampling: the model has to continue them with an opinion."""
    rng = random.Random(seed)
    openings = (
        "{title} is", "I watched {title} last night and", "The {aspect} of {title} is",
        "In {title}, {person} plays", "{title} is a {genre} that", "Honestly, {title}",
        "The new {genre} {title}", "I saw {title} with my friends and",
    )
    return [
        rng.choice(openings).format(
            title=movie_title(rng), aspect=rng.choice(ASPECTS), person=person(rng),
            genre=rng.choice(GENRES),
        )
        for _ in range(n)
    ]
