"""Built-in prompt texts, written for tokenleap: requests whose answers repeat much of the prompt, the case
n-gram / suffix speculation is for.

- ``CODE_SNIPPETS``: ten small functions (4-9 lines) with an edit to make;
- ``MODULE_EDITS``: ten modules of 20-30 lines with a local edit to make, the whole module being the answer
  (an editor's "rewrite the file" request);
- ``PARAGRAPHS``: ten paragraphs to summarize.
"""

CODE_SNIPPETS = [
    (
        "Rename the variable `x` to `total` and add type hints. Return the whole function.",
        """\
def order_total(items):
    x = 0
    for item in items:
        x += item.price * item.quantity
    if x > 100:
        x = x * 0.95
    return x
""",
    ),
    (
        "Replace the loop with a list comprehension. Keep everything else the same.",
        """\
def even_squares(numbers):
    result = []
    for n in numbers:
        if n % 2 == 0:
            result.append(n * n)
    return result
""",
    ),
    (
        "Add a docstring to this function and keep the body unchanged.",
        """\
def clamp(value, low, high):
    if value < low:
        return low
    if value > high:
        return high
    return value
""",
    ),
    (
        "Make this function raise ValueError when `denominator` is zero instead of returning None.",
        """\
def safe_ratio(numerator, denominator):
    if denominator == 0:
        return None
    return numerator / denominator
""",
    ),
    (
        "Convert this class to a dataclass. Keep the method as it is.",
        """\
class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def distance_to(self, other):
        return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5
""",
    ),
    (
        "Use a `with` statement to open the file, and keep the function otherwise identical.",
        """\
def count_lines(path):
    f = open(path)
    count = 0
    for line in f:
        if line.strip():
            count += 1
    f.close()
    return count
""",
    ),
    (
        "Rename `data` to `records` everywhere in this function.",
        """\
def summarize(data):
    names = [d['name'] for d in data]
    ages = [d['age'] for d in data]
    oldest = max(data, key=lambda d: d['age'])
    return {'names': names, 'mean_age': sum(ages) / len(ages),
            'oldest': oldest['name']}
""",
    ),
    (
        "Replace the string concatenation with f-strings. Change nothing else.",
        """\
def greeting(user, unread):
    text = 'Hello, ' + user.first_name + ' ' + user.last_name + '!'
    text += ' You have ' + str(unread) + ' unread messages.'
    return text
""",
    ),
    (
        "Add logging of each retry attempt with the `logging` module; keep the retry logic the same.",
        """\
import time

def fetch_with_retry(fetch, attempts=3, delay=0.5):
    for attempt in range(attempts):
        try:
            return fetch()
        except ConnectionError:
            time.sleep(delay)
    raise ConnectionError('all attempts failed')
""",
    ),
    (
        "Split this function into two: one that parses a line and one that loops over the lines.",
        """\
def parse_config(text):
    config = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        key, value = line.split('=', 1)
        config[key.strip()] = value.strip()
    return config
""",
    ),
]

PARAGRAPHS = [
    "The city council met on Tuesday to discuss the proposal to convert the old railway yard into a park. "
    "Supporters argued that the neighbourhood has the least green space per resident in the city and that "
    "the site has been empty for twelve years. Opponents worried about the cost of removing contaminated "
    "soil, estimated at four million euros, and asked whether housing would be a better use of the land. "
    "The council agreed to commission an environmental survey before voting in the spring.",
    "Honeybees communicate the location of food with a waggle dance. A forager returning to the hive runs "
    "a short straight line while shaking its body, then loops back and repeats. The angle of the straight "
    "run relative to vertical matches the angle between the food source and the sun, and the duration of "
    "the run tells the other bees how far away the food is. Bees that follow the dance then fly out and "
    "search the indicated area, using smell to find the exact flowers.",
    "Our quarterly results show revenue of 18.2 million dollars, up 9 percent from the same quarter last "
    "year, driven mostly by the new subscription plan. Operating costs rose 14 percent because we hired "
    "forty engineers and opened the Lisbon office. As a result, operating margin fell from 21 to 17 percent. "
    "We expect hiring to slow in the second half and margins to recover to around 20 percent by year end.",
    "A speculative decoding system uses a cheap drafter to guess several next tokens and then asks the large "
    "model to check all of the guesses in a single forward pass. Every guess the large model agrees with is "
    "kept, and the first disagreement is replaced by the large model's own choice. Because the check is "
    "exact, the output is the same as without drafting; the only thing that changes is speed, which "
    "depends on how often the guesses are right.",
    "The library will be closed from 23 December to 2 January for the installation of a new heating "
    "system. Books due during the closure can be returned to the drop box at the main entrance, and no "
    "late fees will be charged for that period. The online catalogue and e-book lending will remain "
    "available. Study rooms booked for January should be confirmed again after the reopening.",
    "Sourdough bread rises because of a culture of wild yeast and lactic acid bacteria. The yeast produces "
    "carbon dioxide, which is trapped by the gluten network and makes the dough expand, while the bacteria "
    "produce acids that give the bread its sour taste and help it keep longer. A starter must be fed "
    "regularly with flour and water; a starter kept in the fridge needs feeding about once a week.",
    "During the outage on 4 March, the primary database became unreachable after a configuration change "
    "reduced the connection limit from 500 to 50. Services retried aggressively, which kept the limit "
    "saturated even after traffic dropped. The on-call engineer rolled back the change after 38 minutes. "
    "We will add a review step for database configuration and cap retries with exponential backoff.",
    "Tidal forces arise because gravity weakens with distance. The side of the Earth facing the Moon is "
    "pulled a little more strongly than the centre, and the far side a little less, so the oceans bulge on "
    "both sides. As the Earth rotates, a coastline passes through both bulges each day, which is why most "
    "places see two high tides roughly twelve and a half hours apart.",
    "The new onboarding programme pairs every new employee with a mentor from a different team for the "
    "first three months. Mentors meet their mentee every week, help them find the right people to ask, and "
    "review their first project. In the pilot, new staff reported feeling productive four weeks earlier on "
    "average, and mentors said the meetings also helped them learn about other parts of the company.",
    "Electric scooters became popular in the city within two years, but injuries rose with them. The "
    "hospital recorded 212 scooter-related injuries last year, most of them among riders without helmets "
    "and many at night. The transport department now proposes a speed limit of 20 km/h, mandatory lights, "
    "and parking zones near metro stations, and it will review the rules again after one year.",
]

MODULE_EDITS = [
(
"Rename the method `calc` to `total_price` everywhere (definition and calls).",
'''\
class ShoppingCart:
    def __init__(self, tax_rate=0.2):
        self.items = []
        self.tax_rate = tax_rate

    def add(self, name, price, quantity=1):
        if price < 0:
            raise ValueError("price must not be negative")
        self.items.append({"name": name, "price": price, "quantity": quantity})

    def remove(self, name):
        self.items = [item for item in self.items if item["name"] != name]

    def calc(self):
        subtotal = sum(item["price"] * item["quantity"] for item in self.items)
        return round(subtotal * (1 + self.tax_rate), 2)

    def receipt(self):
        lines = [f"{item['name']} x{item['quantity']}: {item['price']:.2f}" for item in self.items]
        lines.append(f"Total: {self.calc():.2f}")
        return "\\n".join(lines)
'''),
(
"Replace every `print` call with `logger.info`, and add `logger = logging.getLogger(__name__)` after the imports.",
'''\
import json
import logging
import os


def load_settings(path):
    print("loading settings from", path)
    if not os.path.exists(path):
        print("no settings file, using defaults")
        return {"debug": False, "workers": 4}
    with open(path) as f:
        settings = json.load(f)
    print("loaded", len(settings), "settings")
    return settings


def save_settings(path, settings):
    print("saving settings to", path)
    with open(path, "w") as f:
        json.dump(settings, f, indent=2)
    print("saved")
'''),
(
"Add type hints to every function signature. Do not change anything else.",
'''\
def mean(values):
    if not values:
        raise ValueError("mean of empty list")
    return sum(values) / len(values)


def median(values):
    ordered = sorted(values)
    n = len(ordered)
    middle = n // 2
    if n % 2 == 1:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def variance(values):
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / len(values)


def describe(values):
    return {
        "mean": mean(values),
        "median": median(values),
        "variance": variance(values),
        "count": len(values),
    }
'''),
(
"Fix the bug: `withdraw` must raise ValueError when the balance is too low instead of going negative.",
'''\
class Account:
    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance
        self.history = []

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("deposit must be positive")
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount <= 0:
            raise ValueError("withdrawal must be positive")
        self.balance -= amount
        self.history.append(("withdraw", amount))

    def statement(self):
        lines = [f"Account of {self.owner}"]
        for kind, amount in self.history:
            lines.append(f"{kind:>10}: {amount:8.2f}")
        lines.append(f"{'balance':>10}: {self.balance:8.2f}")
        return "\\n".join(lines)
'''),
(
"Add a `timeout` parameter (default 10) to `fetch_json` and pass it to `urlopen`.",
'''\
import json
from urllib.error import HTTPError
from urllib.request import Request, urlopen


def build_request(url, token=None):
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return Request(url, headers=headers)


def fetch_json(url, token=None):
    request = build_request(url, token)
    try:
        with urlopen(request) as response:
            body = response.read().decode("utf-8")
    except HTTPError as error:
        raise RuntimeError(f"request to {url} failed with status {error.code}") from error
    return json.loads(body)


def fetch_all(urls, token=None):
    results = {}
    for url in urls:
        results[url] = fetch_json(url, token)
    return results
'''),
(
"Convert the class to use `@dataclass`, keeping all methods unchanged.",
'''\
class Rectangle:
    def __init__(self, width, height, color="black"):
        self.width = width
        self.height = height
        self.color = color

    def area(self):
        return self.width * self.height

    def perimeter(self):
        return 2 * (self.width + self.height)

    def scale(self, factor):
        return Rectangle(self.width * factor, self.height * factor, self.color)

    def is_square(self):
        return self.width == self.height

    def describe(self):
        kind = "square" if self.is_square() else "rectangle"
        return f"a {self.color} {kind} of {self.width} by {self.height}"
'''),
(
"Make `parse_line` skip lines that start with `#` and blank lines. Keep the rest of the code the same.",
'''\
import csv
from datetime import date


def parse_line(line):
    name, born, city = line.split(",")
    year, month, day = (int(part) for part in born.split("-"))
    return {"name": name.strip(), "born": date(year, month, day), "city": city.strip()}


def read_people(path):
    people = []
    with open(path) as f:
        for line in f:
            person = parse_line(line)
            if person is not None:
                people.append(person)
    return people


def write_people(path, people):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        for person in people:
            writer.writerow([person["name"], person["born"].isoformat(), person["city"]])
'''),
(
"Rename the parameter `lst` to `numbers` in every function.",
'''\
def running_total(lst):
    totals = []
    current = 0
    for value in lst:
        current += value
        totals.append(current)
    return totals


def moving_average(lst, window=3):
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    for i in range(len(lst) - window + 1):
        chunk = lst[i : i + window]
        averages.append(sum(chunk) / window)
    return averages


def normalize(lst):
    low, high = min(lst), max(lst)
    if low == high:
        return [0.0 for _ in lst]
    return [(value - low) / (high - low) for value in lst]
'''),
(
"Add a docstring to every function. Keep the code itself unchanged.",
'''\
import re

WORD = re.compile(r"[A-Za-z']+")


def words(text):
    return [match.group(0).lower() for match in WORD.finditer(text)]


def word_counts(text):
    counts = {}
    for word in words(text):
        counts[word] = counts.get(word, 0) + 1
    return counts


def top_words(text, n=10):
    counts = word_counts(text)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]


def longest_word(text):
    return max(words(text), key=len, default="")
'''),
(
"Change the cache so that it evicts the least recently used entry when it holds more than `capacity` items.",
'''\
class Cache:
    def __init__(self, capacity=128):
        self.capacity = capacity
        self.data = {}
        self.hits = 0
        self.misses = 0

    def get(self, key):
        if key in self.data:
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    def put(self, key, value):
        self.data[key] = value

    def clear(self):
        self.data.clear()
        self.hits = 0
        self.misses = 0

    def stats(self):
        total = self.hits + self.misses
        rate = self.hits / total if total else 0.0
        return {"size": len(self.data), "hits": self.hits, "misses": self.misses, "hit_rate": rate}
'''),
]
