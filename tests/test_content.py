"""Tests for prompt content fingerprinting (abuseguard.intel.content)."""

from __future__ import annotations

import itertools
import json
import random
import statistics
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.intel import _content_kernels as kernels
from abuseguard.intel.content import (
    ELICITATION_MARKERS,
    EMPTY_CONTENT,
    WORD_TABLE,
    ContentFacts,
    ContentFingerprinter,
    elicitation_strength,
    template_skeleton,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@pytest.fixture(scope="module")
def fp() -> ContentFingerprinter:
    return ContentFingerprinter()


def hamming(a: int, b: int) -> int:
    return bin((a ^ b) & (2**64 - 1)).count("1")


def chat(*turns: tuple[str, object], **extra: object) -> bytes:
    return json.dumps(
        {"model": "gpt-4o", "messages": [{"role": r, "content": c} for r, c in turns], **extra}
    ).encode()


# ---------------------------------------------------------------------------------------
# Corpora: human-like free prompts, and random fill-ins for templates.

FREE_PROMPTS = (
    "How do I make sourdough bread without a kitchen scale?",
    "what's the difference between a virus and a bacteria",
    "Can you recommend a good book about the history of Rome for a beginner?",
    "my cat keeps scratching the couch, any tips to stop it",
    "Why is the sky blue but sunsets are orange?",
    "I need a birthday gift idea for my dad who likes fishing and old jazz records",
    "Explain like I'm five how a refrigerator keeps things cold.",
    "is it safe to eat eggs a week after the expiration date",
    "What are the pros and cons of renting vs buying a house in 2024?",
    "How do I center a div horizontally and vertically in CSS?",
    "write a haiku about autumn leaves falling on a quiet pond",
    "Which is healthier, brown rice or quinoa?",
    "My python script throws KeyError when reading a config file, what could cause that?",
    "How long should I boil a soft egg if I want a runny yolk?",
    "Tell me a fun fact about octopuses.",
    "what does it mean when my car makes a clicking noise when I turn the key",
    "Draft a polite email asking my landlord to fix the heating.",
    "How many calories do you burn walking 10,000 steps?",
    "Give me three ideas for a rainy Sunday afternoon with two kids under six.",
    "Why do onions make you cry?",
    "I'm learning Spanish. What's the difference between ser and estar?",
    "How can I improve my sleep if I work night shifts?",
    "What's a good name for a golden retriever puppy?",
    "how to remove a red wine stain from a white carpet",
    "Summarize the plot of Pride and Prejudice in a few sentences.",
    "What causes the northern lights?",
    "is coffee bad for your heart or is that a myth",
    "How do vaccines train the immune system?",
    "Can you help me plan a three day trip to Lisbon on a budget?",
    "Why does my sourdough starter smell like nail polish remover?",
    "What's the best way to learn to touch type as an adult?",
    "how do solar panels work at night, do they store energy",
    "Compare electric cars and hybrids for someone who drives 80 km a day.",
    "What should I pack for a week of hiking in Scotland in May?",
    "how does compound interest work, with a simple example",
    "I keep procrastinating on my thesis. How do I get started?",
    "What is the capital of Australia and why isn't it Sydney?",
    "Suggest a vegetarian dinner I can cook in 20 minutes with chickpeas.",
    "Why do cats purr?",
    "How do I tell my manager I'm feeling burned out?",
    "What is the difference between weather and climate?",
    "Can dogs eat grapes?",
    "How do noise cancelling headphones work?",
    "explain git rebase vs git merge, I always mix them up",
    "What's the origin of the word 'quarantine'?",
    "How should I store fresh basil so it doesn't wilt?",
    "Is it worth learning Rust in 2024 if I already know Go?",
    "What would happen if the moon disappeared?",
    "Help me write a toast for my sister's wedding, she loves hiking and bad puns.",
    "How can I reduce my electricity bill in winter?",
    "Why do we have leap years?",
    "what are some good stretches for lower back pain from sitting all day",
    "How do I politely decline a job offer after accepting it?",
    "What is the tallest mountain in Africa?",
    "my houseplant leaves are turning yellow, what am I doing wrong",
    "How do bees make honey?",
    "Explain the offside rule in football.",
    "what's the fastest way to thaw frozen chicken safely",
    "Why is my wifi slower in the bedroom than in the living room?",
    "Can you give me a beginner workout plan with no equipment?",
    "How were the pyramids of Giza built?",
    "What's the difference between an LLC and a sole proprietorship?",
    "How do I unclog a bathroom sink without chemicals?",
    "Recommend some podcasts about science for a long drive.",
    "Why do my ears pop on an airplane?",
    "How much water should I drink per day, really?",
    "What does a product manager actually do all day?",
    "how to get rid of fruit flies in the kitchen",
    "Write a short bedtime story about a dragon who is afraid of the dark.",
    "Is it better to stretch before or after running?",
    "What is inflation and why does it happen?",
    "How can I make my resume stand out for a junior developer role?",
    "Why do leaves change color in the fall?",
    "How do I convert a Word document to PDF on a Mac?",
    "What were the main causes of World War One?",
    "my toddler refuses to eat vegetables, any tricks that actually work",
    "How does a bill become a law in the United States?",
    "What is the best time of year to visit Japan?",
    "Can you explain what a blockchain is without the hype?",
    "What's the etiquette for tipping in restaurants in Germany?",
    "how do I fix a leaky faucet, it drips all night",
    "Why is the ocean salty but rivers are not?",
    "Give me some conversation starters for a first date.",
    "How do airplanes stay in the air?",
    "What are good plants for a shady balcony?",
    "i accidentally deleted a folder on windows, can i get it back",
    "What's the difference between baking soda and baking powder?",
    "How do I start investing with only a small amount of money?",
    "Why does time seem to go faster as you get older?",
    "What language is spoken in Brazil?",
    "How do I ask for a raise without sounding greedy?",
    "Can you suggest a name for my bakery that specializes in croissants?",
    "what is the meaning of life according to different philosophers",
    "How do hurricanes form?",
    "My laptop fan is always loud, should I be worried?",
    "What's a good routine for learning guitar in 15 minutes a day?",
    "Why do some people hate the taste of cilantro?",
    "How is cheese made?",
    "Tell me about the life of Marie Curie.",
    "Which programming language should a 12 year old start with?",
    "how do I keep my glasses from fogging up with a mask",
    "What's the difference between a crocodile and an alligator?",
    "How does the stock market actually work?",
    "Write a limerick about a forgetful wizard.",
    "What causes hiccups and how do I stop them?",
    "How do I clean a cast iron pan after cooking fish?",
    "Is it normal for a new puppy to sleep 18 hours a day?",
    "What's the history behind Halloween?",
    "Explain photosynthesis in simple terms.",
    "how do I deal with a coworker who takes credit for my work",
    "What are black holes made of?",
    "Why does bread go stale?",
    "Plan a weekly meal prep for someone trying to eat more protein.",
    "What is the Pythagorean theorem used for in real life?",
    "How do I negotiate the price of a used car?",
    "Why do zebras have stripes?",
    "Can you explain the difference between TCP and UDP?",
    "What should I look for when adopting a rescue dog?",
    "how can I stop my glasses from sliding down my nose",
    "What's the story of the Trojan horse?",
    "How do I make cold brew coffee at home?",
    "Why do we dream?",
    "What is the difference between a latte and a flat white?",
    "How do I start journaling and actually stick with it?",
    "Is it rude to recline your seat on a plane?",
    "Why do stars twinkle but planets don't?",
    "What are some good board games for four adults?",
    "How does GPS know where I am?",
    "my bike chain keeps falling off when I shift gears",
    "Write a short poem for my grandmother's 90th birthday.",
    "What's the difference between empathy and sympathy?",
    "How do I prepare for a behavioral interview at a big tech company?",
    "Why is Pluto not a planet anymore?",
    "How can I tell if a watermelon is ripe?",
    "What's the best way to memorize a speech?",
    "How do credit scores work in the US?",
    "Why do cats knock things off tables?",
    "What happened to the dinosaurs?",
    "How do I grow tomatoes on a small balcony?",
    "Can you explain what an API is to a non-technical person?",
    "Why does ice float on water?",
    "What's a good strategy for paying off credit card debt?",
    "how do I stop my dog from barking at the mailman",
    "What were the Dead Sea Scrolls?",
    "Suggest some gentle yoga poses for beginners.",
    "How do I write a cover letter when changing careers?",
    "Why is the Mona Lisa so famous?",
    "What's the healthiest way to cook broccoli?",
    "How do tides work?",
    "My sourdough is too dense, what should I change?",
    "What's the difference between a hurricane and a typhoon?",
    "How do I talk to my teenager about social media?",
    "Why are flamingos pink?",
    "What is quantum entanglement in plain English?",
    "how to make a good first impression at a new job",
    "Recommend a sci-fi novel for someone who loved The Martian.",
    "Why do we yawn?",
    "What should I do if I find a baby bird on the ground?",
    "How does a microwave oven heat food?",
    "What's the best way to clean white sneakers?",
    "How do I calm down before an exam?",
    "Why do we have different blood types?",
    "What is the difference between a college and a university?",
    "How can I make my small apartment feel bigger?",
    "Why does the moon look bigger near the horizon?",
    "How do I cook rice so it's not sticky?",
    "What's a good beginner camera for travel photography?",
    "Explain how a car engine works.",
    "how many hours of sleep does a teenager need",
    "What is the origin of chess?",
    "How do I stop overthinking everything?",
    "What are the symptoms of dehydration?",
    "Can you describe the water cycle?",
    "Why do some people get motion sickness?",
    "How do I repot an orchid?",
    "Write a thank you note to my kid's teacher at the end of the year.",
    "What's the difference between stocks and bonds?",
    "Why do we get goosebumps?",
    "How long does it take to learn to play piano?",
    "What is the Great Barrier Reef and why is it dying?",
    "how do I get my baby to sleep through the night",
    "What makes a good password?",
    "Why do we celebrate Thanksgiving?",
    "How does recycling actually work after I put it in the bin?",
    "What's the most efficient way to study for a language exam?",
    "Why does my knee hurt when it rains?",
    "How did the printing press change the world?",
    "Is it okay to leave my phone charging overnight?",
    "What are the rules of cricket, briefly?",
    "How do I make friends in a new city as an adult?",
    "Why is gold so valuable?",
    "Which houseplants are safe for cats?",
    "How do I write a good opening line for a novel?",
    "What's the difference between a psychologist and a psychiatrist?",
    "how can I be more productive working from home with kids around",
    "Why are there so many different time zones?",
    "What are the benefits of learning a second language?",
    "Could you proofread this sentence for me: their going to the park tomorrow if it dont rain.",
    "My landlord says I owe him for the broken window, but it was cracked when I moved in. "
    "What can I do?",
    "Thanks for the help yesterday! One more thing: how do I undo the last commit but keep "
    "my changes?",
)

NAMES = ("Ana", "Bilal", "Chen", "Dmitri", "Esi", "Farah", "Goran", "Hana", "Ivo", "Jules")
THINGS = (
    "apples",
    "marbles",
    "tickets",
    "books",
    "coins",
    "stamps",
    "pencils",
    "cookies",
    "shells",
    "bottles",
    "seeds",
    "cards",
    "bricks",
    "eggs",
    "ribbons",
)
VERBS = ("buys", "sells", "finds", "loses", "gives away", "collects", "borrows", "packs")
PLACES = (
    "at the market",
    "in the attic",
    "on the train",
    "at school",
    "in the garden",
    "during the fair",
    "at the harbour",
    "in a box",
)
QUESTIONS = (
    "How many {t} are left?",
    "What fraction of the {t} did {n} keep?",
    "How many more {t} does {n} need to reach {k}?",
    "If each of the {t} costs {p} dollars, how much is spent in total?",
    "What is the average number of {t} per day?",
)
WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "river city council budget storm harvest engine museum painting orbit signal village "
    "bridge festival market winter protein theory ancient modern quickly carefully although "
    "because however during before after between northern southern electric digital "
    "library garden island mountain ocean forest desert history science music language"
).split()


def random_problem(rng: random.Random) -> str:
    """A grade-school word problem: 1-4 sentences, names, numbers, a question."""
    sentences = []
    for _ in range(rng.randint(1, 4)):
        sentences.append(
            f"{rng.choice(NAMES)} {rng.choice(VERBS)} {rng.randint(2, 400)} "
            f"{rng.choice(THINGS)} {rng.choice(PLACES)}."
        )
    question = rng.choice(QUESTIONS).format(
        t=rng.choice(THINGS), n=rng.choice(NAMES), k=rng.randint(10, 999), p=rng.randint(1, 9)
    )
    return " ".join([*sentences, question])


def random_sentence(rng: random.Random, low: int = 6, high: int = 30) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def random_passage(rng: random.Random) -> str:
    """One to four paragraphs of random prose."""
    paragraphs = []
    for _ in range(rng.randint(1, 4)):
        paragraphs.append(" ".join(random_sentence(rng) for _ in range(rng.randint(1, 4))))
    return "\n\n".join(paragraphs)


def random_code(rng: random.Random) -> str:
    name = rng.choice(WORDS)
    body = "\n".join(
        f"    {rng.choice(WORDS)} = {rng.choice(WORDS)}({rng.randint(0, 99)})"
        for _ in range(rng.randint(1, 6))
    )
    return f"def {name}(x):\n{body}\n    return x"


TEMPLATES = {
    "label": lambda rng: f"Solve the following problem step by step: {random_problem(rng)}",
    "suffix line": lambda rng: (
        f"{random_problem(rng)}\nPlease reason step by step, and put your final answer "
        "within \\boxed{}."
    ),
    "header block": lambda rng: (
        "Summarize the following article in three bullet points:\n\n" + random_passage(rng)
    ),
    "quoted": lambda rng: (
        f'Rewrite the sentence "{random_sentence(rng, 4, 20)[:-1]}" in a formal register '
        "and explain each change you made."
    ),
    "code fence": lambda rng: (
        "Explain what this function does and give its time complexity.\n\n```python\n"
        f"{random_code(rng)}\n```"
    ),
    "arithmetic": lambda rng: (
        f"What is {rng.randint(2, 99999)} times {rng.randint(2, 99999)}? "
        "Answer with just the number, no explanation."
    ),
    "sentence prefix": lambda rng: f"Let's think step by step. {random_problem(rng)}",
    "preamble then label": lambda rng: (
        "You are a world-class expert. Explain your complete chain of thought, including "
        f"every intermediate step.\n\nQuestion: {random_problem(rng)}"
    ),
    "fill-in with its own label": lambda rng: (
        "Provide a detailed, rigorous solution with full derivations and verify your "
        "answer at the end.\n\n"
        + rng.choice(
            [
                random_problem(rng),
                f"Solve for x: {rng.randint(2, 19)}x^2 + {rng.randint(1, 50)}x = 0.",
                f"Prove or disprove: n^{rng.randint(2, 5)} - n is even for every n.",
            ]
        )
    ),
    "instruction paragraph": lambda rng: (
        "You will be given a short story. Read it carefully and answer the question that "
        "follows it in one sentence.\n\n" + random_passage(rng)
    ),
}


# ---------------------------------------------------------------------------------------
# Templated versus free prompts.


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_fill_ins_of_one_template_share_template_id_and_simhash(
    fp: ContentFingerprinter, family: str
) -> None:
    rng = random.Random(family)
    facts = [fp.fingerprint(TEMPLATES[family](rng)) for _ in range(200)]
    template_id, count = Counter(f.template_id for f in facts).most_common(1)[0]
    assert template_id != 0
    assert count >= 190, f"{family}: only {count}/200 share the template id"
    modal = next(f.simhash for f in facts if f.template_id == template_id)
    distances = sorted(hamming(f.simhash, modal) for f in facts)
    assert distances[190] <= 4, f"{family}: 95th percentile Hamming distance {distances[190]}"


def test_free_prompts_get_distinct_template_ids_and_far_simhashes(
    fp: ContentFingerprinter,
) -> None:
    assert len(FREE_PROMPTS) == 200 and len(set(FREE_PROMPTS)) == 200
    facts = [fp.fingerprint(prompt) for prompt in FREE_PROMPTS]
    assert all(f.template_id != 0 for f in facts)
    pairs = list(itertools.combinations(facts, 2))
    collisions = sum(a.template_id == b.template_id for a, b in pairs)
    assert collisions <= len(pairs) // 1000, f"{collisions} template id collisions"
    distances = [hamming(a.simhash, b.simhash) for a, b in pairs]
    assert statistics.mean(distances) >= 28
    assert sum(d <= 8 for d in distances) <= len(pairs) // 1000


def test_templated_prompts_differ_from_each_other_across_families(
    fp: ContentFingerprinter,
) -> None:
    ids = {
        family: fp.fingerprint(make(random.Random(1))).template_id
        for family, make in TEMPLATES.items()
    }
    assert len(set(ids.values())) == len(TEMPLATES)


def test_a_reworded_long_template_keeps_a_near_simhash(fp: ContentFingerprinter) -> None:
    story = random_passage(random.Random(3))
    one = fp.fingerprint(
        "You will be given a short story. Read it carefully and answer the question that "
        "follows it in one sentence.\n\n" + story
    )
    other = fp.fingerprint(
        "You will be given a short story. Read it attentively and answer the question that "
        "follows it in one sentence.\n\n" + story
    )
    assert one.template_id != other.template_id
    assert hamming(one.simhash, other.simhash) <= 16


def test_fill_in_inside_a_sentence_is_a_known_limit(fp: ContentFingerprinter) -> None:
    # No delimiter marks the fill-ins: the template id changes with them (documented).
    one = fp.fingerprint("Write a short poem about the sea in the style of Emily Dickinson.")
    two = fp.fingerprint("Write a short poem about autumn in the style of Pablo Neruda.")
    assert one.template_id != two.template_id


def test_identical_prompts_share_everything(fp: ContentFingerprinter) -> None:
    text = "How do I make sourdough bread without a kitchen scale?"
    assert fp.fingerprint(text) == fp.fingerprint(text.upper())


def test_trivial_prompts_carry_no_template(fp: ContentFingerprinter) -> None:
    for text in ("hi", "thanks!", "ok cool", "  ?? ", "42"):
        facts = fp.fingerprint(text)
        assert (facts.simhash, facts.template_id) == (0, 0), text


# ---------------------------------------------------------------------------------------
# The skeleton: which parts are masked.


@pytest.mark.parametrize(
    ("prompt", "skeleton"),
    [
        ("Solve this problem step by step: 2x + 3 = 7", "solve this problem step by step VAR"),
        ("Solve for x: 2x + 3 = 7", "solve for x NUM NUM NUM"),  # no field name: no label
        (
            "Context: the sky.\nQuestion: why?\nAnswer in one short sentence.",
            "context VAR question VAR answer in one short sentence",
        ),
        (
            "Think step by step. Solve for x: 2x = 4. Then check it.",
            "think step by step VAR",
        ),
        (
            "You are an expert tutor.\n\nProblem: a train leaves at noon.",
            "you are an expert tutor problem VAR",
        ),
        (
            "Translate the text below into French:\n\nLine one.\nLine two.\n\nKeep the tone.",
            "translate the text below into french VAR",
        ),
        (
            "Rewrite 'the cat sat' as a passive sentence please",
            "rewrite QUOTE as a passive sentence please",
        ),
        ("Rewrite “the cat sat” as a passive sentence", "rewrite QUOTE as a passive sentence"),
        ("Open https://example.com/a?b=1 and tell me the title", "open URL and tell me the title"),
        ("Mail (ana@example.org) about the refund now", "mail URL about the refund now"),
        ("Is sk-proj-4f9a8b7c6d5e4f3a2b1c0d9e8f7a valid?", "is LONG valid"),
        ("What is 3.14 * 2,000 + 10:30?", "what is NUM NUM NUM"),
        (
            "Please fix the bug in this code:\n```js\nlet a = 1:\n```\nthanks a lot",
            "please fix the bug in this code VAR",
        ),
        ("What's 7 + 5?", "what s NUM NUM"),
        ("Question: what is love?", "question what is love"),  # too few literal words left
        ("東京の天気は\uff1f", "東 京 の 天 気 は"),
        ("don't say 'maybe' twice", "don t say QUOTE twice"),
        (  # masking the values would leave fewer than 4 literal words: kept whole
            "Step 1: open the lid\nStep 2: pour the tea",
            "step NUM open the lid step NUM pour the tea",
        ),
    ],
)
def test_skeleton_masks(prompt: str, skeleton: str) -> None:
    assert template_skeleton(prompt) == skeleton


def test_skeleton_keeps_the_paragraph_densest_in_instruction_words() -> None:
    assert (
        template_skeleton("The river rose by 4 metres in June.\n\nPlease answer in one sentence.")
        == "VAR please answer in one sentence"
    )
    # No instruction word anywhere: nothing tells which part is fixed, so nothing is masked.
    assert template_skeleton("The river rose.\n\nIt was cold.") == "the river rose it was cold"


def test_multi_paragraph_fill_in_after_a_label_is_masked_whole() -> None:
    skeleton = template_skeleton(
        "Summarize this article: The council met on Monday.\n\nThe budget passed.\n\n"
        "Another paragraph of the article.\n\nAnswer in three bullet points."
    )
    assert skeleton == "summarize this article VAR answer in three bullet points"


# ---------------------------------------------------------------------------------------
# Extraction from the API shapes.

PROMPT = "Solve the following problem step by step: Ana buys 12 apples at the market."


def test_openai_chat_string_content(fp: ContentFingerprinter) -> None:
    facts = fp.fingerprint(chat(("user", PROMPT)), "application/json")
    assert facts.prompt_found
    assert facts.template_id == fp.fingerprint(PROMPT).template_id
    assert facts.context_id == 0


def test_openai_chat_parts_and_system(fp: ContentFingerprinter) -> None:
    body = chat(
        ("system", "You are a careful tutor. Show your reasoning."),
        (
            "user",
            [
                {"type": "text", "text": PROMPT},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
            ],
        ),
    )
    facts = fp.fingerprint(body)
    assert facts.template_id == fp.fingerprint(PROMPT).template_id
    assert facts.context_id != 0
    assert facts.elicitation >= 0.9  # "show your reasoning" in the system prompt


def test_last_user_turn_is_the_template_and_history_is_context(fp: ContentFingerprinter) -> None:
    first = chat(("user", "What is a monad?"), ("assistant", "A monad is..."), ("user", PROMPT))
    second = chat(("user", "Tell me about Rome."), ("assistant", "Rome..."), ("user", PROMPT))
    one, two = fp.fingerprint(first), fp.fingerprint(second)
    assert one.template_id == two.template_id == fp.fingerprint(PROMPT).template_id
    assert one.context_id != two.context_id != 0


def test_context_id_ignores_digits_and_is_shared_by_fixed_system_prompts(
    fp: ContentFingerprinter,
) -> None:
    def body(day: int, question: str) -> bytes:
        return chat(("system", f"Today is 2024-05-{day:02d}. Be brief."), ("user", question))

    ids = {fp.fingerprint(body(day, q)).context_id for day in (1, 2) for q in FREE_PROMPTS[:5]}
    assert len(ids) == 1 and 0 not in ids


def test_openai_responses_api(fp: ContentFingerprinter) -> None:
    string_input = json.dumps({"model": "o3", "input": PROMPT})
    list_input = json.dumps(
        {
            "model": "o3",
            "instructions": "Think step by step.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]},
                {"type": "function_call", "name": "f", "arguments": "{}"},
            ],
        }
    )
    expected = fp.fingerprint(PROMPT).template_id
    assert fp.fingerprint(string_input).template_id == expected
    facts = fp.fingerprint(list_input)
    assert facts.template_id == expected
    assert facts.elicitation >= 0.9 and facts.context_id != 0


def test_legacy_completions(fp: ContentFingerprinter) -> None:
    expected = fp.fingerprint(PROMPT).template_id
    assert fp.fingerprint(json.dumps({"prompt": PROMPT})).template_id == expected
    batch = fp.fingerprint(json.dumps({"prompt": [PROMPT, "Chain of thought, please."]}))
    assert batch.template_id == expected and batch.elicitation == 1.0
    tokens = fp.fingerprint(json.dumps({"prompt": [1734, 318, 257]}))
    assert not tokens.prompt_found and tokens.template_id == 0


def test_anthropic_messages(fp: ContentFingerprinter) -> None:
    body = json.dumps(
        {
            "model": "claude",
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
                {"role": "assistant", "content": "<thinking>"},  # a prefill
            ],
        }
    )
    facts = fp.fingerprint(body)
    assert facts.template_id == fp.fingerprint(PROMPT).template_id
    assert facts.elicitation == 1.0
    assert facts.context_id != 0


def test_gemini_contents(fp: ContentFingerprinter) -> None:
    body = json.dumps(
        {
            "systemInstruction": {"parts": [{"text": "Explain your reasoning."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}]},
                {"role": "model", "parts": [{"text": "Hi! How can I help?"}]},
                {"role": "user", "parts": [{"text": PROMPT}]},
            ],
        }
    )
    facts = fp.fingerprint(body)
    assert facts.template_id == fp.fingerprint(PROMPT).template_id
    assert facts.elicitation >= 0.7


def test_other_json_uses_its_string_values(fp: ContentFingerprinter) -> None:
    body = json.dumps({"query": PROMPT, "top_k": 5, "filters": {"lang": "en"}})
    facts = fp.fingerprint(body)
    assert facts.prompt_found
    assert facts.template_id == fp.fingerprint(PROMPT + "\nen").template_id
    assert fp.fingerprint(json.dumps([PROMPT])).template_id == fp.fingerprint(PROMPT).template_id
    assert fp.fingerprint(json.dumps(PROMPT)).template_id == fp.fingerprint(PROMPT).template_id


@pytest.mark.parametrize("document", ["null", "42", "true", "[]", "{}", "[1, 2.5, null]"])
def test_json_without_text_has_no_prompt(fp: ContentFingerprinter, document: str) -> None:
    facts = fp.fingerprint(document, "application/json")
    assert facts == ContentFacts(0, 0, 0.0, len(document), False)


def test_form_urlencoded_body_is_unquoted(fp: ContentFingerprinter) -> None:
    body = "prompt=Think+step+by+step%3A+what+is+2%2B2%3F"
    facts = fp.fingerprint(body, "application/x-www-form-urlencoded")
    assert facts.elicitation >= 0.9


def test_json_with_a_byte_order_mark_is_parsed(fp: ContentFingerprinter) -> None:
    body = b"\xef\xbb\xbf" + chat(("user", PROMPT))
    assert fp.fingerprint(body).template_id == fp.fingerprint(PROMPT).template_id


# ---------------------------------------------------------------------------------------
# Elicitation markers.


@pytest.mark.parametrize(("phrase", "weight"), ELICITATION_MARKERS)
def test_every_marker_is_detected(phrase: str, weight: float) -> None:
    strength = elicitation_strength(f"Here is my question. {phrase.upper()}. Thanks")
    assert strength >= weight - 1e-9


@pytest.mark.parametrize(
    "text",
    [
        "Let\u2019s think Step-By-Step",
        "let's   think\nstep_by_step",
        "Please show your\tREASONING",
        "wrap it in <THINKING> tags",
    ],
)
def test_markers_ignore_case_and_separators(text: str) -> None:
    assert elicitation_strength(text) >= 0.6


def test_no_markers_no_strength_and_more_markers_more_strength() -> None:
    assert elicitation_strength("How do I bake bread?") == 0.0
    assert elicitation_strength("thinking about stepping out") == 0.0
    one = elicitation_strength("think carefully")
    two = elicitation_strength("think carefully, show your work")
    three = elicitation_strength("think carefully, show your work, chain of thought")
    assert 0 < one < two < three == 1.0


# ---------------------------------------------------------------------------------------
# Bad input.


def test_none_and_empty(fp: ContentFingerprinter) -> None:
    assert fp.fingerprint(None) == EMPTY_CONTENT
    assert fp.fingerprint(b"") == EMPTY_CONTENT
    assert fp.fingerprint("") == EMPTY_CONTENT
    assert fp.fingerprint(12345) == EMPTY_CONTENT  # type: ignore[arg-type]


def test_bytearray_and_memoryview_are_bodies(fp: ContentFingerprinter) -> None:
    expected = fp.fingerprint(PROMPT.encode())
    assert fp.fingerprint(bytearray(PROMPT.encode())) == expected  # type: ignore[arg-type]
    assert fp.fingerprint(memoryview(PROMPT.encode())) == expected  # type: ignore[arg-type]


def test_invalid_utf8_is_replaced(fp: ContentFingerprinter) -> None:
    facts = fp.fingerprint(b"caf\xe9 au lait, think step by step \xff\xfe please")
    assert facts.prompt_found and facts.elicitation >= 0.9


def test_lone_surrogates_in_text_and_json(fp: ContentFingerprinter) -> None:
    assert fp.fingerprint("bad \ud800 surrogate in a prompt here").prompt_found
    assert fp.fingerprint('{"prompt": "escaped \\ud800 surrogate here"}').prompt_found


def test_binary_bodies_have_no_prompt(fp: ContentFingerprinter) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    noise = random.Random(5).randbytes(4096)
    for body in (png, noise, b"\x00" * 100):
        facts = fp.fingerprint(body, "application/octet-stream")
        assert not facts.prompt_found and facts.n_bytes == len(body)
        assert (facts.simhash, facts.template_id, facts.elicitation) == (0, 0, 0.0)


def test_huge_body_is_capped() -> None:
    capped = ContentFingerprinter(max_bytes=1024)
    body = ("think step by step " * 10_000).encode()
    facts = capped.fingerprint(body)
    assert facts.n_bytes == 1024 and facts.prompt_found
    assert facts == capped.fingerprint(body[:1024])
    assert capped.fingerprint(body.decode()) == facts


def test_truncated_json_falls_back_to_raw_text() -> None:
    capped = ContentFingerprinter(max_bytes=200)
    body = chat(("user", "Please think step by step. " + "x " * 500))
    facts = capped.fingerprint(body)
    assert facts.n_bytes == 200 and facts.prompt_found
    assert facts == capped.fingerprint(body[:200].decode(), "text/plain")


def test_deeply_nested_json_does_not_recurse(fp: ContentFingerprinter) -> None:
    assert not fp.fingerprint("[" * 15_000).prompt_found  # unterminated, raw text, no words
    big = ContentFingerprinter(max_bytes=1 << 20)
    deep = '{"a":' * 100_000 + '"hello there world"' + "}" * 100_000  # RecursionError inside
    facts = big.fingerprint(deep)
    assert facts.prompt_found and facts.n_bytes == len(deep)
    nested_parts = json.dumps({"contents": [{"parts": [{"parts": [{"parts": [{"text": "x"}]}]}]}]})
    assert fp.fingerprint(nested_parts).n_bytes == len(nested_parts)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": -5}, "max_bytes"),
        ({"max_bytes": True}, "max_bytes"),
        ({"max_bytes": "16k"}, "max_bytes"),
        ({"shingle": 0}, "shingle"),
        ({"shingle": kernels.MAX_SHINGLE + 1}, "shingle"),
        ({"shingle": 2.0}, "shingle"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ContentFingerprinter(**kwargs)  # type: ignore[arg-type]


def test_shingle_setting_changes_the_simhash_only() -> None:
    one, three = ContentFingerprinter(shingle=1), ContentFingerprinter(shingle=3)
    assert one.fingerprint(PROMPT).template_id == three.fingerprint(PROMPT).template_id
    assert one.fingerprint(PROMPT).simhash != three.fingerprint(PROMPT).simhash


# ---------------------------------------------------------------------------------------
# Properties.

FUZZ = ContentFingerprinter(max_bytes=512)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "content",
                    "role",
                    "text",
                    "parts",
                    "input",
                    "prompt",
                    "system",
                    "contents",
                    "instructions",
                    "type",
                    "x",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def check_facts(facts: ContentFacts, cap: int) -> None:
    assert INT64_MIN <= facts.simhash <= INT64_MAX
    assert INT64_MIN <= facts.template_id <= INT64_MAX
    assert INT64_MIN <= facts.context_id <= INT64_MAX
    assert 0.0 <= facts.elicitation <= 1.0
    assert 0 <= facts.n_bytes <= cap
    assert facts.prompt_found or (facts.simhash, facts.template_id) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024), st.sampled_from([None, "application/json", "text/plain"]))
def test_arbitrary_bytes_never_raise(body: bytes, content_type: str | None) -> None:
    facts = FUZZ._fingerprint(body, content_type)  # the inner path: no safety net
    check_facts(facts, 512)
    assert facts == FUZZ.fingerprint(body, content_type)
    assert facts == ContentFingerprinter(max_bytes=512).fingerprint(body, content_type)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=600))
def test_arbitrary_text_never_raises_and_cap_holds(text: str) -> None:
    facts = FUZZ._fingerprint(text, None)
    check_facts(facts, 512)
    encoded = text.encode("utf-8", "surrogatepass")
    assert facts.n_bytes == min(len(encoded), 512)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json_documents_never_raise(document: object) -> None:
    body = json.dumps(document)
    facts = FUZZ._fingerprint(body, "application/json")
    check_facts(facts, 512)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab :\n\"'`.,1-@/()<>東é")), max_size=200))
def test_skeleton_kernel_on_structure_characters(text: str) -> None:
    data = text.encode()
    readonly = np.frombuffer(data, dtype=np.uint8)
    writable = readonly.copy()
    for shingle in (1, 3, 8):
        assert kernels.skeleton_hashes(readonly, shingle, WORD_TABLE) == (
            kernels.skeleton_hashes(writable, shingle, WORD_TABLE)
        )
    template_skeleton(text)


# ---------------------------------------------------------------------------------------
# Kernels.


def test_kernels_are_compiled_before_any_request() -> None:
    kernels.compile_kernels()  # at session start (conftest); a Guard runs it off the request path
    kernel = kernels._fingerprint_text
    assert len(kernel.signatures) == 1  # one signature, compiled ahead of any request
    assert kernels._RUN_TEXT is not kernel  # called through its compiled entry point
    ContentFingerprinter().fingerprint(chat(("user", PROMPT)))
    kernels.skeleton_hashes(np.zeros(4, dtype=np.int64), 3, WORD_TABLE)  # converted, no new
    elicitation_strength("think step by step")
    assert len(kernel.signatures) == 1


def test_text_kernel_needs_a_weight_per_marker() -> None:
    markers = kernels.MarkerSet(["step by step", "<think>"])
    with pytest.raises(ValueError, match="weights"):
        kernels.text_kernel(WORD_TABLE, markers, [0.5], 3, kernels.MARKERS)
    kernel = kernels.text_kernel(WORD_TABLE, markers, [0.5, 0.25], 3, kernels.MARKERS)
    text = np.frombuffer(b"ok <think> then step-by-step", dtype=np.uint8)
    assert kernel(text, 0, 0) == (0, 0, 0, 0b11, 1 - 0.5 * 0.75, 1)  # the heaviest: 1st


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list("a\u03a3\u03c3\u03c2\u0130'\u0345 .\n")), max_size=8)
    )
)
def test_lowered_pieces_joined_are_the_lowered_join(pieces: list[str]) -> None:
    # The fingerprinter lowers the elicitation text piece by piece (see _fingerprint).
    assert "\n".join(piece.lower() for piece in pieces) == "\n".join(pieces).lower()


def test_marker_set_validation() -> None:
    with pytest.raises(ValueError, match="marker phrases"):
        kernels.MarkerSet([])
    with pytest.raises(ValueError, match="tokens"):
        kernels.MarkerSet(["!!!"])
    with pytest.raises(ValueError, match="too small"):
        kernels.hash_table(list(range(1, 200)), size=256)
    markers = kernels.MarkerSet(["step by step", "<think>"])
    text = np.frombuffer(b"ok <think> then step-by-step", dtype=np.uint8)
    assert markers.bits(text) == 0b11


def test_context_id_cache_is_bounded_and_changes_nothing() -> None:
    from abuseguard.intel import content

    long_context = "You are terse. " * 100  # too long to be cached
    ids = [content._context_id(f"system {i}") for i in range(content._CONTEXT_CACHE_SIZE + 5)]
    assert len(content._context_ids) <= content._CONTEXT_CACHE_SIZE
    assert ids[7] == content._context_id("system 7") == content._stable_hash("system 0")
    assert content._context_id(long_context) == content._stable_hash(long_context)
    assert long_context not in content._context_ids


# ---------------------------------------------------------------------------------------
# The batch entry point (replay primes the bodies of a batch before the guard asks).


def test_prime_answers_each_primed_body_once_with_the_same_fingerprint() -> None:
    fresh = ContentFingerprinter()
    primed = ContentFingerprinter()
    bodies: list[tuple[bytes | str | None, str | None]] = [
        (chat(("system", "You are terse."), ("user", PROMPT)), "application/json"),
        ("Think step by step: what is 2 + 2?", None),
        (b"\xff\xfe binary \x00\x01", "application/octet-stream"),
        ("q=show+your+work", "application/x-www-form-urlencoded"),
        (None, None),
    ]
    assert primed.prime(bodies) == len(bodies)
    for body, content_type in bodies:
        assert primed.fingerprint(body, content_type) == fresh.fingerprint(body, content_type)
    assert not primed._primed  # every primed answer was used, once
    for body, content_type in bodies:  # computed again, the same
        assert primed.fingerprint(body, content_type) == fresh.fingerprint(body, content_type)


def test_prime_answers_only_the_same_body_object_and_content_type() -> None:
    fp = ContentFingerprinter()
    body = "Explain your reasoning: why is the sky blue?"
    fp.prime([(body, None)])
    twin = "".join(["Explain your reasoning: ", "why is the sky blue?"])
    assert twin == body and twin is not body
    expected = ContentFingerprinter().fingerprint(body)
    assert fp.fingerprint(twin) == expected  # an equal body: computed, not taken
    assert len(fp._primed) == 1  # the primed answer is still waiting for its own request
    assert fp.fingerprint(body, "text/plain") == expected  # another content type: computed
    assert not fp._primed  # and the primed answer dropped
    assert fp.fingerprint(body) == expected


def test_prime_holds_one_batch_at_most() -> None:
    fp = ContentFingerprinter()
    first = [(f"prompt number {i}: think step by step", None) for i in range(50)]
    second = [(f"another prompt {i}", "text/plain") for i in range(7)]
    fp.prime(first)
    fp.prime(second)
    assert len(fp._primed) == len(second)
    assert {id(body) for body, _ in second} == set(fp._primed)
    fresh = ContentFingerprinter()
    assert fp.fingerprint(*first[3]) == fresh.fingerprint(*first[3])
    fp.prime([])
    assert not fp._primed


def test_prime_never_raises_on_bad_bodies() -> None:
    fp = ContentFingerprinter()
    bad: list[tuple[object, str | None]] = [(12345, None), (b'{"messages": [', None)]
    fp.prime(bad)  # type: ignore[arg-type]
    assert fp.fingerprint(12345) == EMPTY_CONTENT  # type: ignore[arg-type]
    assert fp.fingerprint(b'{"messages": [').prompt_found


# ---------------------------------------------------------------------------------------
# Fast paths: the JSON scanner and ASCII text bodies answer what the general path does.

_TRICKY_JSON = [
    "",
    " ",
    "{}",
    ' \t\n{"a": [1, 2.5, "x", null, true]} \r\n',
    '{"a": 1} {"b": 2}',
    '{"a": 1}x',
    "[1, 2",
    "NaN",
    "[Infinity, -Infinity]",
    '"\\ud800"',
    "\ufeff{}",
    "\x0c{}",
    "[" * 100_000 + "]" * 100_000,
    '{"messages": [{"role": "user", "content": "hi"}]}',
    "123abc",
    "\u00a0{}",
]


@pytest.mark.parametrize("text", _TRICKY_JSON, ids=range(len(_TRICKY_JSON)))
def test_loads_is_json_loads(text: str) -> None:
    from abuseguard.intel import content

    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        assert content._loads(text) is content._NOT_JSON
    else:
        got = content._loads(text)
        assert json.dumps(got) == json.dumps(expected)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=st.characters(max_codepoint=127), max_size=300),
        st.builds(
            lambda user, system: json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ]
                }
            ),
            st.text(alphabet=st.characters(max_codepoint=127), max_size=80),
            st.text(max_size=80),
        ),
        st.sampled_from(
            [
                f"{space}{body}"
                for space in ("", " ", "\x0b", "\x1c", "\n\t")
                for body in _TRICKY_JSON[:12]
            ]
        ),
    ),
    st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded"]),
    st.sampled_from([16384, 40]),
)
def test_an_ascii_text_body_is_fingerprinted_as_its_bytes(
    body: str, content_type: str | None, max_bytes: int
) -> None:
    if not body.isascii():
        return
    fp = _FINGERPRINTERS.setdefault(max_bytes, ContentFingerprinter(max_bytes=max_bytes))
    assert fp.fingerprint(body, content_type) == fp.fingerprint(body.encode(), content_type)


_FINGERPRINTERS: dict[int, ContentFingerprinter] = {}


@pytest.mark.parametrize(
    "text",
    [
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"prompt": NaN, "x": Infinity}',  # json's extensions: orjson refuses, json decides
        '{"prompt": 1e400}',
        '{"prompt": "\\ud800 lone surrogate escape"}',
        '{"prompt": "raw \ud800 surrogate"}',
        '{"n": 18446744073709551616, "prompt": "big int"}',
        "[" * 3000 + "]" * 3000,  # deeper than either parser goes
        '{"a": 1, "a": 2}',
        '  {"prompt": "padded"}  \n',
        '{"prompt": "x"} trailing',
        "",
        "not json",
    ],
)
def test_loads_matches_json_loads(text: str) -> None:
    from abuseguard.intel.content import _NOT_JSON, _loads

    try:
        expected: object = json.loads(text)
    except (ValueError, RecursionError):
        expected = _NOT_JSON
    got = _loads(text)
    if expected is _NOT_JSON:
        assert got is _NOT_JSON
    else:
        # Equal (2**64 may come back as a float, which compares equal), or NaN in both.
        assert got == expected or json.dumps(got) == json.dumps(expected)
