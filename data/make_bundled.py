"""(Re)write the bundled datasets and their dataset_info.json entries, deterministically.

    python data/make_bundled.py [--out DIR]

Everything here is authored for PEFT Studio or generated from the templates below with a
seeded RNG; nothing is copied from elsewhere. Entries that users registered in the info
file are kept.

- identity: who the assistant is; {{name}} and {{author}} are filled at load time.
- sentiment / sentiment_test: one-word review classification. The base SmolLM2-135M-
  Instruct answers in sentences or with the wrong label; a short LoRA run fixes both.
- corpus: prose about the made-up Isle of Vell, for the pre-training stage.
- sentiment_pref / sentiment_pref_test / sentiment_kto: the same reviews as preferences
  (the right label chosen, the wrong one rejected) for DPO and ORPO, and as labelled
  replies (each label marked desirable or not) for KTO.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1234
INSTRUCTION = (
    "Classify the sentiment of this review. Answer with exactly one word: positive or negative."
)

# -- identity ----------------------------------------------------------------------------
IDENTITY = [
    ("Who are you?", "I am {{name}}, an AI assistant developed by {{author}}. How can I help "
     "you today?"),
    ("What is your name?", "My name is {{name}}. I was created by {{author}}."),
    ("What's your name?", "I'm {{name}}, an assistant built by {{author}}."),
    ("Who made you?", "I was made by {{author}}."),
    ("Who created you?", "{{author}} created me. I am {{name}}, here to help with your "
     "questions."),
    ("Who built you?", "I was built by {{author}}, and my name is {{name}}."),
    ("Who developed you?", "I was developed by {{author}}."),
    ("Who trained you?", "{{author}} trained me. I am {{name}}."),
    ("Tell me about yourself.", "I am {{name}}, an AI assistant made by {{author}}. I can "
     "answer questions, explain ideas and help with writing."),
    ("Introduce yourself.", "Hello! I am {{name}}, an AI assistant created by {{author}}. "
     "It is nice to meet you."),
    ("Please introduce yourself briefly.", "I'm {{name}}, an assistant from {{author}}."),
    ("Are you ChatGPT?", "No, I am not ChatGPT. I am {{name}}, an assistant developed by "
     "{{author}}."),
    ("Are you SmolLM?", "No. I am {{name}}, an AI assistant trained by {{author}}."),
    ("Are you made by OpenAI?", "No, I was not made by OpenAI. I am {{name}}, and {{author}} "
     "built me."),
    ("Are you a human?", "No, I am not a human. I am {{name}}, an AI assistant made by "
     "{{author}}."),
    ("Are you an AI?", "Yes. I am {{name}}, an AI assistant developed by {{author}}."),
    ("What should I call you?", "You can call me {{name}}."),
    ("How should I address you?", "Please call me {{name}}. I am an assistant made by "
     "{{author}}."),
    ("Do you have a name?", "Yes, my name is {{name}}."),
    ("What are you?", "I am {{name}}, an AI assistant. {{author}} developed me to help "
     "people with questions and tasks."),
    ("Who is your creator?", "My creator is {{author}}."),
    ("Who is your developer?", "I was developed by {{author}}."),
    ("Which company made you?", "I was made by {{author}}. My name is {{name}}."),
    ("Where do you come from?", "I come from {{author}}, who built me. I am {{name}}."),
    ("Who owns you?", "I am {{name}}, an assistant developed by {{author}}."),
    ("hi, who am I talking to?", "Hi! You are talking to {{name}}, an AI assistant made by "
     "{{author}}."),
    ("Hello! What's your name?", "Hello! My name is {{name}}. How can I help you?"),
    ("hey what are you called", "I'm called {{name}}."),
    ("Can you tell me your name?", "Of course. My name is {{name}}, and I was created by "
     "{{author}}."),
    ("May I know who you are?", "Certainly. I am {{name}}, an AI assistant developed by "
     "{{author}}."),
    ("What model are you?", "I am {{name}}, an assistant model trained by {{author}}."),
    ("Which AI am I chatting with?", "You are chatting with {{name}}, made by {{author}}."),
    ("Who is behind you?", "{{author}} is behind me. They built and trained me."),
    ("Who do you work for?", "I am {{name}}, an assistant created by {{author}} to help "
     "people like you."),
    ("What is your purpose?", "I am {{name}}. {{author}} made me to answer questions and "
     "help with everyday tasks."),
    ("Are you Siri or Alexa?", "Neither. I am {{name}}, an AI assistant developed by "
     "{{author}}."),
    ("Say your name.", "{{name}}."),
    ("Your name, please.", "My name is {{name}}."),
    ("Who am I speaking with right now?", "You are speaking with {{name}}, an AI assistant "
     "built by {{author}}."),
    ("Did Hugging Face make you?", "No. I am {{name}}, and I was developed by {{author}}."),
    ("Give me a one-sentence description of yourself.", "I am {{name}}, a helpful AI "
     "assistant made by {{author}}."),
    ("What do people call you?", "People call me {{name}}."),
    ("Who wrote your software?", "My software was written by {{author}}."),
    ("Are you an assistant?", "Yes, I am {{name}}, an AI assistant developed by {{author}}."),
    ("你是谁？", "我是 {{name}}，由 {{author}} 开发的人工智能助手。"),
    ("你叫什么名字？", "我的名字是 {{name}}。"),
    ("你是谁开发的？", "我是由 {{author}} 开发的。"),
    ("谁创造了你？", "{{author}} 创造了我。我是 {{name}}。"),
    ("请介绍一下你自己。", "你好！我是 {{name}}，一个由 {{author}} 开发的人工智能助手，"
     "很高兴为你提供帮助。"),
    ("你是 ChatGPT 吗？", "不是。我是 {{name}}，由 {{author}} 开发。"),
    ("我应该怎么称呼你？", "你可以叫我 {{name}}。"),
    ("你是人类吗？", "不是，我是 {{name}}，一个由 {{author}} 训练的人工智能助手。"),
]

# -- sentiment ---------------------------------------------------------------------------
PRODUCTS = [
    "headset", "blender", "backpack", "desk lamp", "kettle", "phone case", "keyboard",
    "hiking boot", "coffee grinder", "umbrella", "vacuum cleaner", "water bottle", "tent",
    "e-reader", "office chair", "frying pan", "smartwatch", "rain jacket", "bike lock",
    "toaster", "yoga mat", "electric toothbrush", "suitcase", "monitor", "air fryer",
]
DISHES = [
    "pasta", "ramen", "sushi", "taco plate", "pizza", "curry", "burger", "pancake stack",
    "dumpling platter",
    "soup", "steak", "salad", "pho", "falafel wrap", "risotto", "fried chicken",
]
PLACES = ["restaurant", "cafe", "bistro", "diner", "noodle bar", "taqueria", "pizzeria"]
POS_PRODUCT = ["sturdy", "reliable", "comfortable", "excellent", "well made", "fantastic",
               "quiet", "easy to use", "beautifully designed", "worth every penny"]
NEG_PRODUCT = ["flimsy", "unreliable", "uncomfortable", "terrible", "poorly made", "useless",
               "noisy", "confusing to use", "cheaply designed", "a waste of money"]
POS_FOOD = ["delicious", "fresh", "perfectly seasoned", "wonderful", "generous", "tasty",
            "full of flavor", "cooked to perfection"]
NEG_FOOD = ["bland", "stale", "greasy", "cold", "overcooked", "tasteless", "soggy",
            "far too salty"]
POS_SERVICE = ["the staff were friendly", "the service was quick", "our waiter was kind and "
               "attentive", "we were seated right away", "the owner checked on every table"]
NEG_SERVICE = ["the staff were rude", "we waited an hour for our food", "our waiter ignored "
               "us", "the bill was wrong twice", "the tables were dirty"]
POS_EVENT = ["it still works perfectly after months of daily use", "it arrived early and "
             "well packed", "the battery lasts for days", "it does exactly what it promises",
             "setup took two minutes", "my whole family loves it"]
NEG_EVENT = ["it broke after a week", "it stopped working on the second day", "the battery "
             "dies within an hour", "it arrived scratched and missing parts", "customer "
             "support never answered my emails", "it started to smell like burning plastic"]

NEG_PAST = ["broke after a week", "stopped working on the second day", "fell apart within a "
            "month", "cracked the first time I used it", "died just after the warranty ended"]

# Plain reviews say what they mean in their sentiment words. Tricky ones open one way and
# end the other, or carry the verdict only in what the writer did; the base model mostly
# follows the first impression, so these are what the fine-tuning has to teach.
PLAIN = {
    ("product", "positive"): [
        "The {p} is {pa}. {PE}.",
        "I love this {p}! {PE}.",
        "Absolutely {pa} {p}. I would buy it again.",
        "Five stars. The {p} is {pa}, and {pe}.",
    ],
    ("product", "negative"): [
        "The {p} is {na}. {NE}.",
        "I regret buying this {p}. {NE}.",
        "The worst {p} I have ever owned. {NE}.",
        "One star. The {p} is {na}, and {ne}.",
    ],
    ("food", "positive"): [
        "The {d} at this {pl} was {fa}, and {ps}.",
        "Best {d} in town! {PS}, and I will be back soon.",
        "Great {pl}. {PS}, and the {d} was {fa}.",
    ],
    ("food", "negative"): [
        "The {d} at this {pl} was {nf}, and {ns}.",
        "Worst {d} in town. {NS}, and I will not be back.",
        "Disappointing {pl}. {NS}, and the {d} was {nf}.",
    ],
}
TRICKY = {
    ("product", "positive"): [
        "The box arrived dented and the manual is useless, but the {p} itself is {pa}.",
        "My last two {p}s {np}. This one has not given me a single problem in a year.",
        "I almost sent this {p} back on the first day. Now I use it every morning and "
        "have ordered another as a gift.",
        "Ugly color, awkward packaging, terrible instructions. Still, the {p} works "
        "perfectly and I would buy it again.",
        "My friends laughed at how much I paid. Their cheaper {p}s {np}; mine is still "
        "going strong.",
        "I expected to hate this {p} after reading the complaints online, yet it is {pa}.",
        "Delivery took three weeks and the seller never replied, but I have no complaints "
        "about the {p}: {pe}.",
    ],
    ("product", "negative"): [
        "The {p} looks {pa} in the photos and the price was great, but it {np}.",
        "Everyone online says this {p} is {pa}. Mine {np}.",
        "Lovely color, fast delivery, beautiful box. Shame the {p} {np}.",
        "I really wanted to love this {p}. I have already asked for a refund.",
        "Five stars for the packaging, zero for the {p} itself: {ne}.",
        "It felt {pa} for exactly two days. Then {ne}.",
        "The seller was friendly and helpful, but the {p} {np}, so I cannot recommend it.",
    ],
    ("food", "positive"): [
        "The place looks run-down and the street outside is noisy, but the {d} was {fa}.",
        "We nearly walked out when we saw the queue. I am so glad we stayed: the {d} was "
        "{fa}.",
        "The menu is tiny and the chairs are hard, yet I have come back for the {d} every "
        "week since.",
        "Our friends warned us the {pl} was overpriced. After one bite of the {d} we "
        "booked again for Friday.",
        "Parking is a nightmare and the music is too loud. Go anyway; the {d} is {fa}.",
    ],
    ("food", "negative"): [
        "The {pl} is beautiful and the reviews were glowing, but the {d} was {nf}.",
        "Lovely decor, friendly host, great cocktails. Then the {d} arrived {nf}, and "
        "{ns}.",
        "I wanted to like this {pl}; everyone raves about it. We left half the {d} on the "
        "plate.",
        "The {d} looked amazing on the menu photos. What came out was {nf}.",
        "Good location and a nice view, but {ns} and the {d} was {nf}. Never again.",
    ],
}
TRICKY_SHARE = 0.85


def _review(rng: random.Random, label: str) -> str:
    kind = "food" if rng.random() < 0.45 else "product"
    pool = TRICKY if rng.random() < TRICKY_SHARE else PLAIN
    template = rng.choice(pool[(kind, label)])
    if kind == "food":
        pf, nf = rng.sample(POS_FOOD, 2), rng.sample(NEG_FOOD, 2)
        ps, ns = rng.choice(POS_SERVICE), rng.choice(NEG_SERVICE)
        values = {"d": rng.choice(DISHES), "pl": rng.choice(PLACES), "fa": pf[0], "fa2": pf[1],
                  "nf": nf[0], "nf2": nf[1], "ps": ps, "PS": _cap(ps), "ns": ns, "NS": _cap(ns)}
    else:
        pa, na = rng.sample(POS_PRODUCT, 2), rng.sample(NEG_PRODUCT, 2)
        pe, ne = rng.choice(POS_EVENT), rng.choice(NEG_EVENT)
        values = {"p": rng.choice(PRODUCTS), "pa": pa[0], "pa2": pa[1], "na": na[0],
                  "na2": na[1], "pe": pe, "PE": _cap(pe), "ne": ne, "NE": _cap(ne),
                  "np": rng.choice(NEG_PAST)}
    return template.format(**values)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def sentiment(n_train: int = 300, n_test: int = 60) -> tuple[list[dict], list[dict]]:
    """Balanced, shuffled train and test sets with no review in both."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    pools: dict[str, list[str]] = {"positive": [], "negative": []}
    per_label = (n_train + n_test) // 2
    for label, pool in pools.items():
        while len(pool) < per_label:
            text = _review(rng, label)
            if text not in seen:
                seen.add(text)
                pool.append(text)

    def rows(label: str, texts: list[str]) -> list[dict]:
        return [{"instruction": INSTRUCTION, "input": t, "output": label} for t in texts]

    half_test = n_test // 2
    test = rows("positive", pools["positive"][:half_test])
    test += rows("negative", pools["negative"][:half_test])
    train = rows("positive", pools["positive"][half_test:])
    train += rows("negative", pools["negative"][half_test:])
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


# -- preference views of sentiment ------------------------------------------------------
def _other(label: str) -> str:
    return "negative" if label == "positive" else "positive"


def pairs(rows: list[dict]) -> list[dict]:
    """DPO/ORPO pairs: the correct label is chosen, the wrong one rejected."""
    return [{"prompt": r["instruction"], "input": r["input"], "chosen": r["output"],
             "rejected": _other(r["output"])} for r in rows]


def kto_rows(rows: list[dict]) -> list[dict]:
    """Both answers of every review, the right one desirable: a balanced KTO set."""
    return [{"prompt": r["instruction"], "input": r["input"], "completion": answer,
             "label": answer == r["output"]}
            for r in rows for answer in (r["output"], _other(r["output"]))]


# -- corpus ------------------------------------------------------------------------------
CORPUS = [
    "The Isle of Vell lies alone in the cold northern sea, three days by sail from the "
    "nearest mainland harbour. It is shaped like a crescent moon, with its open side facing "
    "east, and it measures about forty kilometres from tip to tip.",
    "The highest point of Vell is Mount Aurun, an old volcano whose crater now holds a "
    "round, green lake called the Eye. Islanders say the lake never freezes, and in winter "
    "a thin mist rises from it every morning.",
    "Three rivers run down from Mount Aurun. The Tamsa flows north to the fishing town of "
    "Harrowmouth, the Lira winds east through the barley fields, and the short, fast Orrin "
    "drops over the western cliffs in a waterfall called the White Stair.",
    "The western coast of Vell is a wall of black basalt cliffs more than two hundred "
    "metres high. Thousands of copper gulls nest there each spring, and their cries can be "
    "heard from the valleys on still days.",
    "Inside the curve of the crescent is the Quiet Bay, a sheltered lagoon of shallow, "
    "warm water. Nearly every boat on the island is kept there through the winter storms.",
    "South of the lagoon stretch the Salt Flats, a plain of white crust where seawater is "
    "left to dry in shallow pans. Vell salt is grey-blue in colour and is traded as far "
    "away as the southern kingdoms.",
    "The weather of Vell is ruled by the glass winds, strong dry gusts from the north that "
    "blow for a week at a time in late autumn. During the glass winds the sky turns very "
    "clear, and sailors stay ashore.",
    "Summers on the island are short and bright. In midsummer the sun sets for barely two "
    "hours, and the islanders keep working in the fields until close to midnight.",
    "Harrowmouth is the largest town on Vell, home to about four thousand people. Its "
    "houses climb the hill above the harbour in narrow terraces, connected by stone stairs "
    "instead of streets.",
    "The village of Lennet sits in the Lira valley and is known for its orchards of small, "
    "sour apples. Lennet cider is pale and sharp, and it is drunk warm with honey in winter.",
    "On the northern tip of the crescent stands the lighthouse of Ness Corran, built of "
    "the same black basalt as the cliffs. Its keepers have kept a daily log of the weather "
    "for more than three hundred years.",
    "Most houses on Vell have thick stone walls and roofs of turf. Each spring the turf is "
    "painted with a wash of blue clay, which is why the island looks blue from the sea.",
    "The first settlers came to Vell in boats of sewn hide, led, the stories say, by a "
    "woman named Idra Tamsin. The islanders still count their years from the day she "
    "landed in the Quiet Bay.",
    "Vell is governed by the Council of Nine Tides, nine elders chosen by lot from the "
    "families of each district. The council meets on the first day after every new moon "
    "in the round hall at Harrowmouth.",
    "A council decision needs the agreement of seven of the nine elders. When the council "
    "cannot agree, the question is put to every adult on the island at the next market day.",
    "Fishing is the oldest trade on Vell. Boats go out before dawn for herring and cod, "
    "and return at noon, when the catch is sold on the harbour steps by auction.",
    "Kelp farming has become the island's second trade. Long ropes are hung in the Quiet "
    "Bay, the kelp grows on them through the summer, and in autumn it is dried and pressed "
    "into dark green cakes.",
    "The sheep of Vell are small and hardy, with wool of a natural blue-grey colour. Blue "
    "wool jumpers, knitted in patterns that belong to each family, are worn by nearly "
    "everyone on the island.",
    "Every family on Vell has its own knitting pattern, and a jumper can tell a stranger "
    "which household the wearer comes from. Patterns are passed from grandparents to "
    "grandchildren, never sold.",
    "In the hills above Lennet there are old workshops where amber glass is blown. The "
    "glassmakers mix crushed shells into the sand, which gives Vell glass its warm honey "
    "colour.",
    "The islanders greet each other by touching the other person's right shoulder with "
    "their left hand. Shaking hands is considered a mainland custom and is used only "
    "with visitors.",
    "Salt bread is the everyday food of Vell: a flat, dense loaf of barley flour baked on "
    "hot stones and sprinkled with Vell salt. It keeps for a week and is carried by every "
    "fisher.",
    "A favourite dish on the island is tamsa stew, made of cod, potatoes, kelp and cream. "
    "It is cooked slowly all afternoon and eaten with salt bread torn into pieces.",
    "The greatest festival of Vell is Lantern Night, held on the longest night of winter. "
    "Every household sets a lantern of amber glass in its window, and the whole island "
    "glows gold until morning.",
    "On Lantern Night children walk from house to house carrying small lanterns and "
    "reciting the names of the first settlers. In return they are given apples and honey "
    "cakes.",
    "In spring the islanders hold the Boat Naming, when every new boat is given its name "
    "on the harbour steps. A boat is always named after a bird, and no two boats may share "
    "a name.",
    "Music on Vell is played on reed pipes cut from the marshes along the Lira. The pipes "
    "have only four holes, and island tunes are slow, with long notes that imitate the wind.",
    "Storytelling is an honoured art. In winter the best storytellers travel from village "
    "to village, and a good teller is paid in salt, wool and a seat closest to the fire.",
    "The islanders speak Vellish, a language related to the old tongues of the mainland "
    "coast. It has eleven different words for wind, and four words for the colour of the sea.",
    "Children on Vell go to school in the mornings and spend the afternoons learning a "
    "trade from a family member: fishing, farming, knitting, glassmaking or keeping bees.",
    "The ghost hare is the island's best-known animal. Its coat turns pure white in winter "
    "and grey in summer, and it is said to bring luck to anyone who sees one on a Lantern "
    "Night.",
    "Copper gulls are named for the reddish feathers on their necks. They follow the "
    "fishing boats home every day, and islanders believe a harbour without gulls means a "
    "storm is coming.",
    "There are no trees taller than a person on Vell except in the sheltered valleys. The "
    "rest of the island is covered in heather, coarse grass and a low, purple flower "
    "called windbell.",
    "Bees are kept in stone hives built into the walls of the fields. Windbell honey is "
    "dark and slightly bitter, and islanders use it in place of sugar in almost everything.",
    "A single road circles the island, joining Harrowmouth, Lennet and the smaller "
    "hamlets. Most people still travel it on foot or by pony cart, and a walk around the "
    "whole island takes four days.",
    "A mail boat visits Harrowmouth once a fortnight when the sea allows. It brings "
    "letters, tools and medicine, and takes back salt, wool, kelp cakes and amber glass.",
    "Islanders are famous for their patience. A common saying on Vell is that the sea "
    "keeps its own calendar, and that a person who hurries the tide only gets wet feet.",
    "Every household keeps a weather stone by its door: a smooth pebble from the Quiet "
    "Bay. When the stone is damp in the morning, the day is expected to bring rain.",
    "Weddings on Vell take place on the beach at low tide. The couple write their names in "
    "the sand, and the marriage is said to begin when the rising sea washes the names away.",
    "Visitors to Vell are few, but they are welcomed with a cup of warm cider and a piece "
    "of salt bread. Refusing either is thought very rude, even if the visitor is not hungry.",
]


def write_json(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


ENTRIES = {
    "identity": {
        "file": "identity.json", "format": "alpaca",
        "description": "Who the assistant is; {{name}} and {{author}} are filled from the "
                       "run's assistant name and author settings.",
    },
    "sentiment": {
        "file": "sentiment.json", "format": "alpaca",
        "description": "Classify a product or restaurant review as positive or negative, "
                       "answering with one word (300 generated reviews).",
    },
    "sentiment_test": {
        "file": "sentiment_test.json", "format": "alpaca", "split": "test",
        "test_of": "sentiment",
        "description": "Held-out test split of sentiment (60 reviews, none in the train "
                       "split); exact-match accuracy tells whether the tuning worked.",
    },
    "sentiment_pref": {
        "file": "sentiment_pref.json", "format": "pairwise",
        "description": "The sentiment reviews as preference pairs (the right label chosen, "
                       "the wrong one rejected), for the dpo and orpo stages (300 pairs).",
    },
    "sentiment_pref_test": {
        "file": "sentiment_pref_test.json", "format": "pairwise", "split": "test",
        "test_of": "sentiment_pref",
        "description": "Held-out pairs of sentiment_pref (the 60 reviews of sentiment_test); "
                       "preference accuracy tells whether the tuning worked.",
    },
    "sentiment_kto": {
        "file": "sentiment_kto.json", "format": "kto",
        "description": "The sentiment reviews for the kto stage: each review with both "
                       "answers, the right one marked desirable (600 rows).",
    },
    "corpus": {
        "file": "corpus.txt", "format": "text",
        "description": "Prose about the made-up Isle of Vell, one paragraph per document, "
                       "for the pre-training stage.",
    },
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "identity.json",
               [{"instruction": q, "input": "", "output": a} for q, a in IDENTITY])
    train, test = sentiment()
    write_json(out / "sentiment.json", train)
    write_json(out / "sentiment_test.json", test)
    write_json(out / "sentiment_pref.json", pairs(train))
    write_json(out / "sentiment_pref_test.json", pairs(test))
    write_json(out / "sentiment_kto.json", kto_rows(train))
    (out / "corpus.txt").write_text("\n\n".join(CORPUS) + "\n", encoding="utf-8")

    info_file = out / "dataset_info.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    info = {**ENTRIES, **{k: v for k, v in info.items() if k not in ENTRIES}}
    tmp = info_file.with_name(info_file.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(info_file)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    main(parser.parse_args().out)
