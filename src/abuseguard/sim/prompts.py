"""Prompt text and chat bodies: free human questions, app templates, harvesting templates.

Free prompts are assembled from many patterns and vocabularies, so people rarely repeat
each other. App templates are fixed instructions around variable data (what real
backends send). Harvesting templates are reasoning-elicitation instructions ("show every
step", "think step by step") around generated problems, shared across the accounts of
one operation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _pick(rng: random.Random, items: Sequence[T]) -> T:
    """``rng.choice`` at a third of its cost (prompts draw millions of words)."""
    return items[int(rng.random() * len(items))]


def _int(rng: random.Random, low: int, high: int) -> int:
    """``rng.randint`` (both ends included), cheaper."""
    return low + int(rng.random() * (high - low + 1))


# --- vocabularies ----------------------------------------------------------------------

_TOPICS = (
    "photosynthesis",
    "compound interest",
    "the French revolution",
    "black holes",
    "inflation",
    "the immune system",
    "quantum entanglement",
    "supply and demand",
    "climate change",
    "machine learning",
    "the stock market",
    "vaccines",
    "plate tectonics",
    "the Roman empire",
    "blockchain",
    "sleep cycles",
    "the electoral college",
    "neural networks",
    "CRISPR",
    "the cold war",
    "probability",
    "entropy",
    "cognitive dissonance",
    "mortgages",
    "the water cycle",
    "game theory",
    "DNS",
    "TCP vs UDP",
    "recursion",
    "public key crypto",
    "the Krebs cycle",
    "opportunity cost",
    "impressionism",
    "the Big Bang",
    "microservices",
)
_PAIRS = (
    ("a Roth IRA", "a traditional IRA"),
    ("Python", "JavaScript"),
    ("affect", "effect"),
    ("weather", "climate"),
    ("a virus", "a bacterium"),
    ("RAM", "storage"),
    ("LLC", "S corp"),
    ("empathy", "sympathy"),
    ("stocks", "bonds"),
    ("React", "Vue"),
    ("SQL", "NoSQL"),
    ("baking soda", "baking powder"),
    ("a latte", "a flat white"),
    ("Docker", "a VM"),
    ("mean", "median"),
    ("HIIT", "steady cardio"),
    ("a lease", "a loan"),
    ("git merge", "git rebase"),
    ("OLED", "QLED"),
    ("term life", "whole life insurance"),
)
_TASKS = (
    "reverse a linked list",
    "center a div",
    "undo the last commit",
    "merge two pdfs",
    "remove duplicates from a list",
    "parse a date string",
    "set up a cron job",
    "freeze the top row",
    "make a pivot table",
    "resize all images in a folder",
    "connect to postgres",
    "read a csv file",
    "sort a dictionary by value",
    "export my contacts",
    "write a unit test",
    "handle a timeout",
    "debounce a function",
    "install node on ubuntu",
    "split a string by commas",
    "count words in a file",
)
_TOOLS = (
    "python",
    "excel",
    "google sheets",
    "bash",
    "javascript",
    "react",
    "git",
    "docker",
    "sql",
    "powershell",
    "rust",
    "go",
    "java",
    "c#",
    "notion",
    "figma",
    "vim",
    "kotlin",
)
_RELATIONS = (
    "boss",
    "landlord",
    "teacher",
    "coworker",
    "client",
    "neighbor",
    "professor",
    "team",
    "bank",
    "doctor",
    "mom",
    "recruiter",
    "HOA",
    "customer",
)
_EMAIL_TOPICS = (
    "asking for a raise",
    "a late payment",
    "taking friday off",
    "a broken heater",
    "rescheduling our meeting",
    "a refund",
    "missing the deadline",
    "a job offer",
    "the noise at night",
    "my grade on the midterm",
    "an invoice that is wrong",
    "following up on my application",
    "thanking them for their help",
    "quitting",
)
_OCCASIONS = (
    "a 10 year old's birthday party",
    "a team offsite",
    "a rainy weekend",
    "date night",
    "a baby shower",
    "a wedding toast",
    "a podcast name",
    "a startup name",
    "halloween costumes",
    "a fantasy novel plot",
    "healthy lunches",
    "a sci-fi short story",
    "instagram captions",
)
_DISHES = (
    "lasagna",
    "banana bread",
    "pad thai",
    "chili",
    "pancakes",
    "risotto",
    "curry",
    "brownies",
    "tacos",
    "ramen",
    "shakshuka",
    "mac and cheese",
    "falafel",
)
_INGREDIENTS = ("eggs", "dairy", "gluten", "sugar", "an oven", "meat", "nuts", "butter")
_TONES = (
    "professional",
    "friendly",
    "formal",
    "persuasive",
    "concise",
    "polite",
    "funny",
    "confident",
    "empathetic",
)
_LANGUAGES = (
    "Spanish",
    "French",
    "German",
    "Japanese",
    "Portuguese",
    "Italian",
    "Korean",
    "Hindi",
    "Dutch",
    "Polish",
    "Turkish",
    "Vietnamese",
)
_SUBJECTS = (
    "the meeting",
    "our team",
    "the new policy",
    "my neighbor",
    "the project",
    "the weather",
    "the launch",
    "this quarter",
    "the delivery",
    "the renovation",
    "the contract",
    "my flight",
    "the app",
    "the budget",
    "the printer",
)
_VERBS = (
    "was moved to",
    "needs to happen before",
    "got delayed until",
    "should end by",
    "was cancelled on",
    "will start on",
    "is blocked until",
    "went over budget on",
)
_DAYS = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "next week",
    "tomorrow",
    "the 15th",
    "end of month",
    "Q3",
)
_PROBLEMS = (
    "keeps disconnecting",
    "makes a clicking noise",
    "won't turn on",
    "is so slow",
    "shows a 404",
    "drains the battery",
    "gives a segfault",
    "smells weird",
    "returns null",
    "crashes on startup",
    "leaks memory",
)
_THINGS = (
    "wifi",
    "laptop",
    "car",
    "dishwasher",
    "react app",
    "python script",
    "phone",
    "fridge",
    "docker container",
    "printer",
    "api",
    "build",
)
_FOLLOW_UPS = (
    "thanks! can you make it shorter?",
    "can you give an example?",
    "explain that again simpler",
    "ok and what about the second point?",
    "can you put that in a table",
    "perfect thanks",
    "that didn't work, I get an error",
    "make it more {tone}",
    "now in {language} please",
    "why?",
    "can you add comments to the code",
    "what would you recommend for a beginner?",
    "is there a faster way?",
    "and for {b}?",
    "give me 3 more",
    "hmm are you sure about that",
    "rewrite it as bullet points",
    "what are the downsides?",
    "can you cite sources",
)

_AUDIENCES = ("5", "12", "a beginner", "an engineer", "my grandma")
_STYLES = ("Dr. Seuss", "Shakespeare", "a pirate", "Hemingway", "a haiku")
_PLACES = ("Lisbon", "Tokyo", "Mexico City", "Iceland", "Rome", "Seoul", "Vancouver", "Marrakech")
_ORDER_STATES = ("shipped", "processing", "delivered", "returned")
_COMPANIES = ("Acme GmbH", "Globex LLC", "Initech", "Umbrella SA")
_GROUPINGS = ("country", "customer", "month", "week")
_PERIODS = ("2024", "2025", "the last 30 days")
_PRODUCTS = ("backpack", "lamp", "kettle", "headphones", "desk")

_FREE_PATTERNS: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"explain {_pick(r, _TOPICS)} like I'm {_pick(r, _AUDIENCES)}",
    lambda r: "what's the difference between {} and {}?".format(*_pick(r, _PAIRS)),
    lambda r: f"how do I {_pick(r, _TASKS)} in {_pick(r, _TOOLS)}",
    lambda r: (
        f"can you help me write an email to my {_pick(r, _RELATIONS)} about "
        f"{_pick(r, _EMAIL_TOPICS)}"
    ),
    lambda r: f"give me {_int(r, 3, 12)} ideas for {_pick(r, _OCCASIONS)}",
    lambda r: f"recipe for {_pick(r, _DISHES)} without {_pick(r, _INGREDIENTS)}?",
    lambda r: f"rewrite this to sound more {_pick(r, _TONES)}: {_sentence(r)}",
    lambda r: f"translate to {_pick(r, _LANGUAGES)}: {_sentence(r)}",
    lambda r: f"why does my {_pick(r, _THINGS)} {_pick(r, _PROBLEMS)}",
    lambda r: f"summarize this for me:\n\n{_paragraph(r, _int(r, 3, 7))}",
    lambda r: f"is it true that {_pick(r, _TOPICS)} is related to {_pick(r, _TOPICS)}?",
    lambda r: f"fix this {_pick(r, _TOOLS)} code, it {_pick(r, _PROBLEMS)}:\n{_snippet(r)}",
    lambda r: f"write a short poem about {_pick(r, _TOPICS)} in the style of {_pick(r, _STYLES)}",
    lambda r: f"pros and cons of {_pick(r, _PAIRS)[0]}",
    lambda r: f"quick one: what is {_int(r, 12, 999)} * {_int(r, 12, 999)}",
    lambda r: f"plan a {_int(r, 2, 10)} day trip to {_pick(r, _PLACES)} on a budget",
)

# --- sentences and paragraphs ------------------------------------------------------------

_NOUNS = (
    "customer",
    "report",
    "order",
    "device",
    "package",
    "invoice",
    "account",
    "ticket",
    "feature",
    "update",
    "screen",
    "battery",
    "driver",
    "manager",
    "shipment",
    "refund",
)
_ADJECTIVES = (
    "late",
    "broken",
    "excellent",
    "confusing",
    "fast",
    "expensive",
    "solid",
    "disappointing",
    "reliable",
    "noisy",
    "cheap",
    "beautiful",
    "slow",
    "missing",
)


def _sentence(rng: random.Random) -> str:
    return (
        f"{_pick(rng, _SUBJECTS).capitalize()} {_pick(rng, _VERBS)} {_pick(rng, _DAYS)} "
        f"because the {_pick(rng, _NOUNS)} was {_pick(rng, _ADJECTIVES)}."
    )


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def _snippet(rng: random.Random) -> str:
    name = _pick(rng, ("items", "data", "rows", "users", "values"))
    return (
        f"def process({name}):\n    result = []\n    for i in range(len({name}) + 1):\n"
        f"        result.append({name}[i] * {_int(rng, 2, 9)})\n    return result"
    )


def _review(rng: random.Random) -> str:
    return (
        f"The {_pick(rng, _NOUNS)} was {_pick(rng, _ADJECTIVES)} and the "
        f"{_pick(rng, _NOUNS)} was {_pick(rng, _ADJECTIVES)}. "
        f"{_pick(rng, ('Would buy again.', 'Not worth it.', 'Support was helpful.', 'Meh.', ''))}"
    )


# --- free human prompts ---------------------------------------------------------------------


def free_prompt(rng: random.Random) -> str:
    text = _pick(rng, _FREE_PATTERNS)(rng)
    roll = rng.random()
    if roll < 0.3:
        text = text.capitalize()
    elif roll < 0.35:
        text = text + "??"
    elif roll < 0.4:
        text = "hey, " + text
    return text


def follow_up(rng: random.Random) -> str:
    text = _pick(rng, _FOLLOW_UPS)
    if "{" in text:
        text = text.format(
            tone=_pick(rng, _TONES), language=_pick(rng, _LANGUAGES), b=_pick(rng, _PAIRS)[1]
        )
    return text


def assistant_reply(rng: random.Random) -> str:
    """A short stand-in for the previous assistant turn that chat UIs send back."""
    return (
        f"{_pick(rng, ('Sure!', 'Great question.', 'Here is a summary.', 'Of course.'))} "
        f"{_paragraph(rng, _int(rng, 2, 4))}"
    )


# --- templated app prompts -------------------------------------------------------------------

APP_TEMPLATES: tuple[tuple[str, str, Callable[[random.Random], str]], ...] = (
    (
        "You are a helpful support assistant for an online store. Be concise and polite.",
        "Customer message: {}\nOrder status: {}\nWrite a reply to the customer.",
        lambda r: f"{_sentence(r)}\x00{_pick(r, _ORDER_STATES)}",
    ),
    (
        "You classify product reviews.",
        "Classify the sentiment of the following review as positive, negative or mixed. "
        "Reply with one word.\n\nReview: {}",
        _review,
    ),
    (
        "You are a news summarizer.",
        "Summarize the following article in 3 bullet points:\n\n{}",
        lambda r: _paragraph(r, _int(r, 5, 12)),
    ),
    (
        "You extract structured data from documents and answer only with JSON.",
        "Extract the company name, invoice number, date and total from this text and return "
        'JSON with keys "company", "invoice", "date", "total".\n\n{}',
        lambda r: (
            f"INVOICE #{_int(r, 10000, 99999)} {_pick(r, _COMPANIES)} "
            f"date {_int(r, 1, 28)}/{_int(r, 1, 12)}/2025 "
            f"total EUR {_int(r, 20, 9000)}.{_int(r, 0, 99):02d}"
        ),
    ),
    (
        "You are a professional translator.",
        "Translate the following text from English to {}. Keep the formatting.\n\n{}",
        lambda r: f"{_pick(r, _LANGUAGES)}\x00{_paragraph(r, _int(r, 1, 4))}",
    ),
    (
        "You write SQL for PostgreSQL. Answer with the query only.",
        "Schema: orders(id, customer_id, total, created_at), customers(id, name, country)\n"
        "Question: {}",
        lambda r: (
            f"total revenue per {_pick(r, _GROUPINGS)} "
            f"for orders over {_int(r, 10, 500)} in {_pick(r, _PERIODS)}"
        ),
    ),
    (
        "You write e-commerce copy.",
        "Write a 50-word product description for: {}. Features: {}",
        lambda r: (
            f"{_pick(r, _ADJECTIVES)} {_pick(r, _PRODUCTS)}"
            f"\x00{', '.join(r.sample(_ADJECTIVES, 3))}"
        ),
    ),
    (
        "You triage support tickets.",
        "Return up to 5 tags for this support ticket as a JSON list of strings.\n\nTicket: {}",
        lambda r: f"My {_pick(r, _THINGS)} {_pick(r, _PROBLEMS)}. {_sentence(r)}",
    ),
)  # fmt: skip


def app_prompt(rng: random.Random, template: int) -> tuple[str, str]:
    """(system, user) for app template number ``template``."""
    system, user, fill = APP_TEMPLATES[template % len(APP_TEMPLATES)]
    return system, user.format(*fill(rng).split("\x00"))


# --- harvesting: reasoning elicitation -------------------------------------------------------

ELICITATION_TEMPLATES: tuple[str, ...] = (
    "Solve the following problem. Think step by step and show all of your reasoning in "
    "detail before stating the final answer.\n\nProblem: {}",
    "You are a world-class expert. Explain your complete chain of thought, including every "
    "intermediate step, then give the answer in the form 'Final answer: ...'.\n\nQuestion: {}",
    "Let's think step by step. {}",
    "Provide a detailed, rigorous solution with full derivations. Do not skip any steps, "
    "and verify your answer at the end.\n\n{}",
    "Answer the question below. Write out your reasoning inside <thinking></thinking> tags, "
    "then the answer inside <answer></answer> tags.\n\n{}",
    "Write a Python function that {}. First explain your reasoning in detail, then give the "
    "code, then give test cases and explain why each passes.",
    "Explain, as a teacher would to a student, every step needed to solve this, then give "
    "the answer:\n{}",
    "{}\n\nPlease reason carefully and show your work. Respond in JSON with the keys "
    '"reasoning" (a list of steps) and "answer".',
)

_CITIES = ("Lyon", "Denver", "Osaka", "Porto", "Austin", "Leeds", "Kraków", "Pune", "Recife")
_CODE_TASKS = (
    "returns the {}-th largest element of a list without sorting it",
    "checks whether a string of length up to {} is a palindrome ignoring punctuation",
    "finds the longest increasing subsequence of a list of {} integers",
    "computes the number of ways to climb {} stairs taking 1, 2 or 3 steps",
    "merges {} sorted lists into one sorted list efficiently",
    "detects a cycle in a directed graph with {} nodes given as an adjacency list",
    "implements an LRU cache with capacity {}",
    "parses arithmetic expressions with +, -, *, / and parentheses up to depth {}",
)


def _problem(rng: random.Random) -> str:
    kind = _int(rng, 0, 4)
    if kind == 0:
        a, b = _int(rng, 40, 120), _int(rng, 40, 120)
        return (
            f"A train leaves {_pick(rng, _CITIES)} at {_int(rng, 5, 11)}:00 traveling at {a} "
            f"km/h. Another leaves {_pick(rng, _CITIES)}, {_int(rng, 100, 900)} km away, an "
            f"hour later at {b} km/h toward it. When and where do they meet?"
        )
    if kind == 1:
        a, b, c = _int(rng, 2, 19), _int(rng, -50, 50), _int(rng, -90, 90)
        return f"Solve for x: {a}x^2 + {b}x + {c} = 0, and explain whether the roots are real."
    if kind == 2:
        r, g = _int(rng, 2, 12), _int(rng, 2, 12)
        k = _int(rng, 2, 4)
        return (
            f"A bag holds {r} red and {g} green marbles. {k} are drawn without replacement. "
            f"What is the probability that exactly {k - 1} are red?"
        )
    if kind == 3:
        n = _int(rng, 3, 9)
        return (
            f"There are {n} people in a room; each shakes hands with everyone else exactly "
            f"once except {_int(rng, 1, n - 1)} pairs who refuse. How many handshakes occur?"
        )
    return (
        f"Prove or disprove: for every integer n > {_int(rng, 1, 20)}, "
        f"n^{_int(rng, 2, 5)} - n is divisible by {_pick(rng, (2, 3, 5, 6, 30))}."
    )


_CODE_TEMPLATE = 5


def elicitation_prompt(rng: random.Random, template: int) -> str:
    index = template % len(ELICITATION_TEMPLATES)
    if index == _CODE_TEMPLATE:
        task = _pick(rng, _CODE_TASKS).format(_int(rng, 3, 1000))
        return ELICITATION_TEMPLATES[index].format(task)
    return ELICITATION_TEMPLATES[index].format(_problem(rng))


# --- chat bodies -----------------------------------------------------------------------------

_BODY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
MODELS_CHEAP = ("atlas-1-mini", "atlas-1-mini", "atlas-1")
MODEL_BEST = "atlas-1-reasoning"


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    *,
    stream: bool,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> str:
    """The JSON request body of a chat completion, as the client sends it."""
    body: dict[str, object] = {"model": model, "messages": messages}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
    return _BODY_ENCODER.encode(body)
