"""Built-in prompt sets: export validation, and the evaluation set of the quantization gate.

Scope: data only (no dependencies), so that the exporter (with torch) and the quantizer (without)
check bundles on the same inputs.

- `VALIDATION_TEXTS` / `VALIDATION_INSTRUCTIONS`: the exporter's few fixed prompts (short, long
  past any token limit, non-ASCII, empty, mixed lengths in one batch).
- The evaluation set: 1,201 (text, instruction) pairs that look like real use, generated offline
  from the templates and word lists below by a seeded generator (splitmix64, written here: the
  same pairs on every Python version and platform; no `hash()`, no `random`). Each category
  (short, everyday sentences, paragraphs, texts past `max_length`, accented Latin, Cyrillic,
  Greek, CJK, Arabic/Hebrew, Devanagari, emoji, code, numbers, lists, chat, mixed scripts, web
  noise, empty and whitespace-only) is split the same way: every 4th sample is *calibration*
  (used to choose quantization settings), the rest *held-out* (only measured: the gate's bound
  applies to it). No text appears in both parts.
"""

# Greek, Cyrillic and Turkish letters that look like Latin ones are the point of these lists.
# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

_LONG = (
    "The committee met on a rainy Tuesday to review the budget, the hiring plan and the new "
    "office lease; after three hours of discussion nobody could agree on anything. "
)
VALIDATION_TEXTS: tuple[str, ...] = (
    "I love cats!",
    "The flight from Paris was delayed by four hours and I missed my meeting in Chicago.",
    "Ça coûte 20 €, naïve café — 東京で会いましょう 🙂",
    "",
    _LONG * 40,  # ~1,300 tokens: past any 512 limit, exercises truncation
    "ok",
    "She finally got the job she had dreamed about for years, and called her mother at once.",
)
VALIDATION_INSTRUCTIONS: tuple[str, ...] = (
    "What is the emotion expressed here?",
    "Where did this happen?",
    "What language is this?",
    "What is the topic?",
    "What is the main problem?",
    "What is the sentiment?",
    "Who is mentioned?",
)

CALIBRATION_EVERY = 4  # sample i of each category is calibration when i % 4 == 0


@dataclass(frozen=True)
class Sample:
    """One evaluation pair and the category it was generated for."""

    text: str
    instruction: str
    category: str


# --- the generator -------------------------------------------------------------------------------

_MASK = (1 << 64) - 1


class _Rng:
    """splitmix64: tiny, fully specified, identical everywhere."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n  # bias < n / 2**64: irrelevant here

    def between(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def pick(self, seq: tuple[str, ...]) -> str:
        return seq[self.below(len(seq))]

    def some(self, seq: tuple[str, ...], k: int) -> list[str]:
        """k items of seq, repeats allowed, in drawn order."""
        return [self.pick(seq) for _ in range(k)]


def _seed(name: str) -> int:
    """FNV-1a of the UTF-8 name: each category has its own stream (adding one moves no other)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & _MASK
    return h


def _fill(rng: _Rng, template: str) -> str:
    """Replace {n} (a small number), {N} (a large one, with thousands separators), {k} (digits of
    an id), {d} (a decimal), {y} (a year), {m} (a month or day, two digits)."""
    out = template
    while "{k}" in out:
        out = out.replace("{k}", str(rng.between(100, 99999)), 1)
    while "{m}" in out:
        out = out.replace("{m}", f"{rng.between(1, 28):02d}", 1)
    while "{n}" in out:
        out = out.replace("{n}", str(rng.between(2, 60)), 1)
    while "{N}" in out:
        out = out.replace("{N}", f"{rng.between(1000, 999999):,}", 1)
    while "{d}" in out:
        out = out.replace("{d}", f"{rng.between(0, 9999) / 100:.2f}", 1)
    while "{y}" in out:
        out = out.replace("{y}", str(rng.between(1890, 2030)), 1)
    return out


# --- word lists and templates --------------------------------------------------------------------
# Data: packed lines read better than one word per line.
# fmt: off

_WHO = (
    "My neighbour", "The new manager", "Our teacher", "A tourist from Ohio", "The delivery driver",
    "My little brother", "The mayor", "A customer", "The support team", "Grandma", "The pilot",
    "An old friend", "The landlord", "Our dentist", "The coach", "A stranger on the bus", "The CEO",
    "My roommate", "The nurse", "The school principal",
)
_DID = (
    "finally fixed", "completely forgot", "accidentally broke", "proudly showed me", "returned",
    "complained about", "cancelled", "paid for", "recommended", "painted", "lost", "sold", "ordered",
    "reviewed", "ignored", "celebrated", "rebuilt", "tried to hide", "shared", "found",
)
_WHAT = (
    "the kitchen sink", "her birthday party", "the quarterly report", "a vintage bicycle",
    "the parking ticket", "his wedding speech", "the broken laptop", "our holiday photos",
    "the rent increase", "a cheap flight to Lisbon", "the garden fence", "the science project",
    "the new menu", "an expensive watch", "the team's playbook", "the insurance claim", "a basket of apples",
    "the conference tickets", "the leaking roof", "the family car",
)
_WHERE = (
    "in the hospital", "at the airport", "downtown", "in our village", "at the stadium",
    "in a tiny cafe in Rome", "on the train to Boston", "at the office", "in the park", "at the beach",
    "in the library", "on the farm", "in the mountains", "at the market", "in Tokyo", "at home",
    "in the parking lot", "at the museum", "on a ferry", "in the lab",
)
_WHEN = (
    "yesterday", "last week", "this morning", "on Friday night", "two years ago", "in {y}", "after lunch",
    "before the storm", "during the holidays", "at midnight", "{n} days ago", "last summer",
    "on my birthday", "right after the meeting", "in the spring of {y}",
)
_FEEL = (
    "and I was furious.", "and everyone laughed.", "which made me really sad.",
    "and honestly I am relieved.", "and nobody seemed to care.", "and we were thrilled.",
    "which was a bit embarrassing.", "and I still can't believe it.", "so I feel hopeful.",
    "and it scared the kids.", "which surprised all of us.", "and I am so grateful.",
    "and that was the last straw.", "which bored me to tears.", "and it was worth every cent.",
)
_SHORT = (
    "ok", "thanks!", "no way", "great service", "terrible", "I love it", "meh", "see you soon", "why?",
    "what a day", "refund please", "so tired", "happy birthday", "nope", "yes!!!", "call me", "broken again",
    "best pizza ever", "not bad", "lol", "wow", "help", "sorry", "good morning", "never again", "five stars",
    "too expensive", "on my way", "it works", "the cat", "rain again", "missed the bus", "congrats",
    "who cares", "well done",
)
_TOPIC_SENTENCES = (
    "The central bank raised interest rates by {d} percent to fight inflation.",
    "Researchers found that the new vaccine cut hospital stays by {n} percent.",
    "The city council approved a plan to build {n} new bike lanes by {y}.",
    "Heavy rain flooded the valley and {N} people had to leave their homes.",
    "The striker scored twice in the last {n} minutes and the crowd went wild.",
    "A software update bricked thousands of phones overnight.",
    "The museum reopened after a renovation that cost {N} dollars.",
    "Volunteers planted {N} trees along the river this spring.",
    "The company announced record profits but also {N} layoffs.",
    "Astronomers spotted a comet that will pass Earth in {y}.",
    "The new law requires restaurants to list every allergen on the menu.",
    "Prices for eggs have doubled since {y}, according to the survey.",
    "The band's farewell tour sold out in {n} minutes.",
    "Engineers are still not sure why the bridge cracked.",
    "Students protested outside the ministry for the {n}th day in a row.",
    "The hospital opened a night clinic for patients without insurance.",
    "Wildfires have burned {N} hectares of forest this season.",
    "The chef won the award with a dish made of only {n} ingredients.",
    "A cargo ship blocked the canal for almost a week.",
    "My order arrived {n} days late and the box was completely crushed.",
    "The hotel room was spotless, but the walls were paper thin.",
    "I have been waiting on hold for {n} minutes and nobody answers.",
    "Our daughter took her first steps in the kitchen this morning.",
    "The exam was much harder than the practice tests suggested.",
    "He quit his job to sail around the world on a small boat.",
)

# Accented Latin: French, Spanish, German, Portuguese, Italian, Polish, Turkish, Vietnamese, Czech.
_LATIN = (
    "Le train pour Lyon avait {n} minutes de retard et j'ai raté mon rendez-vous.",
    "Ça coûte {d} €, c'est vraiment trop cher pour un café crème.",
    "Nous avons fêté l'anniversaire de ma sœur à la plage, quelle journée !",
    "El médico me dijo que descansara {n} días, pero tengo que trabajar.",
    "¿Dónde está la estación? Llevo una hora buscándola bajo la lluvia.",
    "La niña ganó el concurso de ortografía y lloró de alegría.",
    "Der Zug nach München hatte {n} Minuten Verspätung, wie immer.",
    "Die Bäckerei an der Ecke verkauft die besten Brötchen der Stadt.",
    "Ich habe mich über die hohe Nebenkostenabrechnung sehr geärgert.",
    "O avião pousou em São Paulo às {n} horas, com muita turbulência.",
    "A reunião foi adiada porque o diretor não apareceu.",
    "Il gelato in piazza costa {d} euro ed è buonissimo.",
    "Perché nessuno mi ha detto che la riunione era stata annullata?",
    "Zapłaciłem {n} złotych za bilet, a pociąg się spóźnił.", "Dziękuję za pomoc, naprawdę to doceniam.",
    "Yarın İstanbul'a gidiyorum ve çok heyecanlıyım.", "Şirket {N} çalışanını işten çıkardı.",
    "Tôi đã đợi xe buýt gần {n} phút dưới trời mưa.", "Món phở ở quán này ngon tuyệt vời!",
    "Přijel jsem pozdě, protože vlak měl poruchu.", "Håkon åt smørbrød på fjorden i går.",
    "Þetta er ótrúlega fallegt land.",
)
_CYRILLIC = (
    "Поезд в Москву опоздал на {n} минут, и я пропустил встречу.",
    "Спасибо большое за помощь, вы очень добры!", "Цены на продукты выросли на {n} процентов с {y} года.",
    "Мы гуляли по парку, пока не начался дождь.", "Почему никто не отвечает на мои письма?",
    "Наша команда выиграла чемпионат в дополнительное время.", "Я купив квиток до Києва за {n} гривень.",
    "Дякую, що прийшли на моє весілля!", "Времето в София днес е слънчево и топло.",
    "Врач сказал, что мне нужно отдохнуть {n} дней.", "Компания объявила о сокращении {N} сотрудников.",
    "Этот фильм был ужасно скучным.",
)
_GREEK = (
    "Το τρένο για τη Θεσσαλονίκη καθυστέρησε {n} λεπτά.", "Ευχαριστώ πολύ για τη βοήθειά σου!",
    "Η θάλασσα ήταν ήρεμη και το φαγητό υπέροχο.", "Γιατί κανείς δεν απαντά στο τηλέφωνο;",
    "Οι τιμές αυξήθηκαν κατά {n} τοις εκατό φέτος.", "Ο γιατρός μου είπε να ξεκουραστώ για {n} ημέρες.",
    "Η ομάδα μας κέρδισε τον τελικό!", "Το μουσείο της Ακρόπολης ήταν γεμάτο τουρίστες.",
)
_CJK = (
    "东京的天气今天很好，我们去公园散步了。", "这家餐厅的服务太差了，我们等了{n}分钟。",
    "我明天要去北京出差，大概{n}天。", "谢谢你的帮助，我非常感激！",
    "股市今天下跌了{d}%，投资者很担心。", "為什麼沒有人回覆我的郵件？",
    "東京で会いましょう。駅の北口で待っています。", "電車が{n}分遅れて、会議に遅刻しました。",
    "このラーメンは本当においしいです！", "昨日、友達と映画を見に行きました。",
    "新しいスマートフォンのバッテリーはすぐに切れる。", "서울의 날씨가 오늘 정말 좋아요.",
    "회의가 {n}시로 연기되었습니다.", "도와주셔서 정말 감사합니다!", "이 영화는 너무 지루했어요.",
)
_RTL = (
    "تأخر القطار إلى القاهرة {n} دقيقة وفاتني الاجتماع.", "شكراً جزيلاً على مساعدتك!",
    "ارتفعت الأسعار بنسبة {n} بالمئة هذا العام.", "لماذا لا يرد أحد على رسائلي؟",
    "فاز فريقنا بالبطولة بعد مباراة صعبة.", "الطقس في دبي حار جداً اليوم.",
    "הרכבת לתל אביב איחרה ב־{n} דקות.", "תודה רבה על העזרה!", "قیمت‌ها امسال {n} درصد افزایش یافت.",
)
_DEVANAGARI = (
    "दिल्ली की ट्रेन {n} मिनट देर से आई और मेरी बैठक छूट गई।", "आपकी मदद के लिए बहुत-बहुत धन्यवाद!",
    "आज मुंबई में बहुत बारिश हो रही है।", "कोई मेरे संदेशों का जवाब क्यों नहीं दे रहा?",
    "हमारी टीम ने फाइनल मैच जीत लिया!", "इस साल कीमतें {n} प्रतिशत बढ़ गईं।",
    "डॉक्टर ने मुझे {n} दिन आराम करने को कहा।", "मुंबईत आज खूप पाऊस पडला.", "আজ কলকাতায় খুব গরম।",
    "சென்னையில் இன்று மழை பெய்தது.",
)
_EMOJI = (
    "🙂", "😂😂😂", "🔥", "❤️", "👍🏽", "🎉🎉", "😡", "🥲", "🤔", "🚀", "👨‍👩‍👧‍👦", "🇫🇷", "☕", "🌧️", "💯",
    "🙏", "😴", "🤯", "🐶", "🍕",
)
_CODE = (
    "def add(a, b):\n    return a + b\n", "for i in range({n}):\n    print(i ** 2)\n",
    "import numpy as np\nx = np.zeros(({n}, {n}), dtype=np.float32)\n",
    "SELECT name, COUNT(*) FROM orders WHERE total > {n} GROUP BY name;",
    "const f = async (url) => { const r = await fetch(url); return r.json(); };",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", {n}); return 0; }\n',
    "git rebase -i HEAD~{n} && git push --force-with-lease",
    "docker run -p 8080:80 -v $(pwd):/app nginx:latest",
    "Traceback (most recent call last):\n  File \"app.py\", line {n}, in <module>\nKeyError: 'id'",
    'public static void main(String[] args) { System.out.println("hi"); }',
    'fn main() { let v: Vec<u32> = (0..{n}).collect(); println!("{:?}", v); }',
    '<div class="card"><h2>Title</h2><p>{n} items</p></div>',
    '{"id": {n}, "name": "widget", "tags": ["a", "b"], "price": {d}}',
    "curl -X POST -H 'Content-Type: application/json' -d '{\"q\": 1}' localhost:{k}",
    "x = [i for i in range({n}) if i % 3 == 0]  # multiples of three",
    "How do I reverse a linked list in C++ without extra memory?",
    "Why does my Python script raise 'IndexError: list index out of range' on line {n}?",
)
_NUMBER_LINES = (
    "Invoice #{k}: {n} units at ${d} each, total due {d}.", "Q{n} revenue: {N} USD (+{d}% YoY), EBITDA {N}.",
    "Call me at +1 (555) {k}-{k} before 5 pm.", "Temperature: {d} °C, humidity {n}%, wind {n} km/h.",
    "Order {k} shipped on {y}-{m}-{m}; tracking 1Z{k}{k}.", "3.14159 2.71828 1.41421 {d} {d} {d}",
    "Score: {n}-{n} after {n} minutes; attendance {N}.", "Flight LH{k} departs {m}:45 from gate B{n}.",
    "{N} + {N} = ?", "Patient BP {n}0/{n}, pulse {n}, glucose {d} mmol/L.",
)
_LIST_ITEMS = (
    "eggs", "milk", "call the plumber", "renew passport", "book flights", "pay the electricity bill",
    "pick up the kids at {n}", "buy {n} apples", "finish the slides", "email the landlord",
    "water the plants", "cancel the gym membership", "fix the bike tyre", "back up the laptop",
    "prepare the quarterly review", "schedule the dentist", "return the library books",
)
_CHAT_USER = (
    "hi, my order hasn't arrived yet", "can you help me reset my password?", "is the store open on sunday?",
    "the app keeps crashing when I log in", "I want to cancel my subscription",
    "what's the weather tomorrow?", "my card was charged twice", "where is my refund??",
    "can I change my delivery address", "thanks, that worked!",
)
_CHAT_AGENT = (
    "Sorry to hear that! Could you share your order number?",
    "Of course. I've sent a reset link to your email.", "Yes, we are open from 10 to {n} on Sundays.",
    "Could you tell me which version of the app you are using?",
    "I can help with that. May I ask why you'd like to cancel?",
    "I have refunded the duplicate charge; it takes {n} business days.",
    "Your refund was issued on {y}-05-{m}.", "Done! Anything else I can help with?",
)
_NOISE = (
    "https://example.com/path?id={k}&ref=abc#top", "contact: jane.doe{n}@example.org",
    "#blessed #mondaymotivation #{n}daysleft", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "!!!!!!!!!!!!!!!!!!!?????????????", "THIS IS THE WORST PRODUCT I HAVE EVER BOUGHT!!!",
    "lol ok brb ttyl idk smh", "C:\\Users\\admin\\Documents\\report_final_v{n}.docx",
    "@support_team pls fix this asap, ticket {k}", "re: re: fwd: FW: meeting notes ({n} attachments)",
    "a a a a a a a a a a a a a a a a a a a a a a a a a a a a a", "----- ===== ***** ----- =====",
    "ñ ü ß ø å æ œ ç é è ê ë", "\u200bzero\u200bwidth\u200bspaces\u200b", "tab\tseparated\tvalues\t{n}\t{d}",
)
_WHITESPACE = (" ", "", "   ", "\n", "\t", "\n\n\n", " \t \n ", "\r\n", "\u00a0", "\u3000", "\u2003\u2003")

_INSTRUCTIONS = (
    "What is the emotion expressed here?", "What is the sentiment?", "What is the topic?",
    "Where did this happen?", "When did this happen?", "Who is mentioned?", "What is the main problem?",
    "What does the author want?", "What language is this?", "Is this positive or negative?",
    "What is the intent of the speaker?", "What product is discussed?", "What is the category?",
    "Summarize this in one word.", "What is the tone?", "What action is requested?",
    "Is this a question or a statement?", "What is the main event?", "Which city is mentioned?",
    "What is the price mentioned?", "Is this spam?", "What is the relationship between the people?",
    "How urgent is this?", "What domain does this text belong to?", "What is the writer's opinion?",
    "Represent the sentence for retrieval:", "Represent the document for clustering:",
    "Represent this text for classification:", "Retrieve a passage that answers this question.",
    "What is the style of this text?", "Who is the audience?", "What is being described?",
    "What went wrong?", "What is the outcome?", "Is the customer satisfied?", "What is the cause?",
    "What time of day is it?", "What is the weather like?", "Which sport is this about?",
    "What kind of document is this?", "Does this text contain personal data?", "What is the speaker's mood?",
    "What object is central here?", "Is this formal or informal?", "What should happen next?",
    "What is the genre?", "answer briefly: what is this about?", "In one word, how does the writer feel?",
    "Read the text carefully and tell me, in as few words as possible, which single feeling "
    "dominates it, ignoring any facts, names, numbers or places that it mentions.",
    "¿Cuál es el tema?", "Quel est le sentiment exprimé ?", "Was ist das Thema?", "Какова тема?",
    "这段话的主题是什么？", "この文の感情は何ですか？", "ما هو موضوع النص؟", "इसका विषय क्या है?",
)
_BY_CATEGORY_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "code": (
        "What programming language is this?", "What does this code do?", "Is there a bug here?",
    ),
    "numbers": ("What quantity is reported?", "What is the total?", "What unit is used?"),
    "lists": ("What is the next task?", "How many items are listed?", "What kind of list is this?"),
    "chat": ("What does the customer need?", "Was the issue resolved?", "Who is speaking?"),
}


# fmt: on

# --- categories ----------------------------------------------------------------------------------


def _sentence(rng: _Rng) -> str:
    if rng.below(3) == 0:
        return _fill(rng, rng.pick(_TOPIC_SENTENCES))
    parts = (rng.pick(_WHO), rng.pick(_DID), rng.pick(_WHAT), rng.pick(_WHERE), rng.pick(_WHEN))
    return _fill(rng, " ".join(parts) + " " + rng.pick(_FEEL))


def _sentences(rng: _Rng, k: int) -> str:
    return " ".join(_sentence(rng) for _ in range(k))


def _from(pool: tuple[str, ...], lo: int, hi: int, sep: str = " ") -> Callable[[_Rng], str]:
    """A generator of lo..hi items of `pool` joined by `sep`."""
    return lambda rng: _fill(rng, sep.join(rng.some(pool, rng.between(lo, hi))))


def _short(rng: _Rng) -> str:
    kind = rng.below(4)
    if kind == 0:  # a bare noun phrase or name
        return rng.pick(_WHAT if rng.below(2) else _WHO)
    s = rng.pick(_SHORT)
    s = s.capitalize() if rng.below(2) else s
    return s + ("", "!", "?", "...", " :)", ".")[rng.below(6)]


def _emoji(rng: _Rng) -> str:
    faces = "".join(rng.some(_EMOJI, rng.between(1, 4)))
    kind = rng.below(3)
    if kind == 0:
        return faces
    if kind == 1:
        return f"{_short(rng)} {faces}"
    return f"{_sentence(rng)} {faces}"


def _list(rng: _Rng) -> str:
    items = [_fill(rng, x) for x in rng.some(_LIST_ITEMS, rng.between(2, 9))]
    style = rng.below(3)
    if style == 0:
        return "\n".join(f"- {x}" for x in items)
    if style == 1:
        return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))
    return "To do: " + ", ".join(items)


def _chat(rng: _Rng) -> str:
    turns = []
    for _ in range(rng.between(1, 4)):
        turns.append("User: " + rng.pick(_CHAT_USER))
        turns.append("Agent: " + _fill(rng, rng.pick(_CHAT_AGENT)))
    return "\n".join(turns)


def _mixed(rng: _Rng) -> str:
    pools = (_LATIN, _CYRILLIC, _GREEK, _CJK, _RTL, _DEVANAGARI)
    parts = [_fill(rng, rng.pick(pools[rng.below(len(pools))])) for _ in range(rng.between(2, 4))]
    parts.append(_sentence(rng))
    return " ".join(parts[i] for i in sorted(range(len(parts)), key=lambda _: rng.next()))


def _noise(rng: _Rng) -> str:
    return _fill(rng, " ".join(rng.some(_NOISE, rng.between(1, 3))))


# (category, count, generator). With the whitespace variants, counts add to 1,201; about a quarter
# of each is calibration.
_CATEGORIES = (
    ("short", 120, _short),
    ("sentence", 200, lambda rng: _sentences(rng, rng.between(1, 2))),
    ("paragraph", 120, lambda rng: _sentences(rng, rng.between(3, 8))),
    ("long", 40, lambda rng: _sentences(rng, rng.between(12, 30))),  # ~250-650 tokens
    ("past_max_length", 40, lambda rng: _sentences(rng, rng.between(45, 90))),  # ~900-1,900 tokens
    ("latin_accents", 100, _from(_LATIN, 1, 3)),
    ("cyrillic", 50, _from(_CYRILLIC, 1, 3)),
    ("greek", 30, _from(_GREEK, 1, 3)),
    ("cjk", 70, _from(_CJK, 1, 3, sep="")),
    ("arabic_hebrew", 30, _from(_RTL, 1, 3)),
    ("devanagari_indic", 30, _from(_DEVANAGARI, 1, 3)),
    ("emoji", 50, _emoji),
    ("code", 70, _from(_CODE, 1, 2, sep="\n")),
    ("numbers", 60, _from(_NUMBER_LINES, 1, 3, sep="\n")),
    ("lists", 50, _list),
    ("chat", 60, _chat),
    ("mixed_scripts", 30, _mixed),
    ("noise", 40, _noise),
)
CATEGORIES: tuple[str, ...] = (*(c for c, _, _ in _CATEGORIES), "empty_whitespace")


def _instruction(rng: _Rng, category: str) -> str:
    special = _BY_CATEGORY_INSTRUCTIONS.get(category)
    if special and rng.below(3) == 0:
        return rng.pick(special)
    return rng.pick(_INSTRUCTIONS)


@lru_cache(maxsize=1)
def evaluation_set() -> tuple[Sample, ...]:
    """All 1,201 samples, category by category, each text distinct."""
    seen: set[str] = set()
    out: list[Sample] = []
    for category, count, make in _CATEGORIES:
        rng = _Rng(_seed(category))
        made = tries = 0
        while made < count:
            tries += 1
            if tries > 100 * count:  # a word list too small for its count: a bug in this file
                raise RuntimeError(f"evaluation set: category {category!r} repeats itself")
            text = make(rng)
            if text in seen:
                continue
            seen.add(text)
            out.append(Sample(text, _instruction(rng, category), category))
            made += 1
    rng = _Rng(_seed("empty_whitespace"))
    for text in _WHITESPACE:  # every variant once
        out.append(Sample(text, _instruction(rng, "empty_whitespace"), "empty_whitespace"))
    return tuple(out)


def _split(calibration: bool) -> tuple[Sample, ...]:
    index: dict[str, int] = {}
    part = []
    for s in evaluation_set():
        i = index[s.category] = index.get(s.category, -1) + 1
        if (i % CALIBRATION_EVERY == 0) == calibration:
            part.append(s)
    return tuple(part)


def calibration_samples() -> tuple[Sample, ...]:
    """The calibration part (about a quarter of each category): used to choose settings."""
    return _split(True)


def heldout_samples() -> tuple[Sample, ...]:
    """The held-out part (the rest): never used to choose, only measured; the gate's bound."""
    return _split(False)


def calibration_pairs() -> list[tuple[str, str]]:
    """(text, instruction) pairs of the calibration part."""
    return [(s.text, s.instruction) for s in calibration_samples()]


def heldout_pairs() -> list[tuple[str, str]]:
    """(text, instruction) pairs of the held-out part."""
    return [(s.text, s.instruction) for s in heldout_samples()]
