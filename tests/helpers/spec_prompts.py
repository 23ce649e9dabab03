"""Chat prompts for the speculative-decoding tests and benchmark: code editing and summarization (the
answer quotes the prompt, so n-gram lookup drafts often) and plain chat (few drafts)."""

from __future__ import annotations

_CODE = [
    (
        "Rename the function `add` to `plus` and return the full code.",
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
        "print(add(2, 3), sub(5, 1))\n",
    ),
    (
        "Add a docstring to each function. Return the full code.",
        "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
        "    return 2 * (width + height)\n",
    ),
    (
        "Change the loop so that it counts down from 10 instead of up. Return the code.",
        'for i in range(10):\n    print(i)\nprint("done")\n',
    ),
    (
        "Add type hints to this function and return it.",
        'def greet(name, times):\n    for _ in range(times):\n        print("Hello, " + name)\n',
    ),
    (
        "Fix the bug: the function should return the largest number. Return the corrected code.",
        "def largest(numbers):\n    best = numbers[0]\n    for n in numbers:\n        if n < best:\n"
        "            best = n\n    return best\n",
    ),
    (
        "Rename the variable `x` to `total` everywhere and return the code.",
        "x = 0\nfor value in [1, 2, 3, 4]:\n    x = x + value\nprint(x)\n",
    ),
    (
        "Convert this JavaScript function to use an arrow function. Return the code.",
        "function square(n) {\n  return n * n;\n}\nconsole.log(square(4));\n",
    ),
    (
        "Make the class attribute `name` private (prefix it with an underscore). Return the full class.",
        "class User:\n    def __init__(self, name):\n        self.name = name\n\n    def hello(self):\n"
        '        return "Hi " + self.name\n',
    ),
]
_TEXT = [
    "The city council met on Tuesday to discuss the new park. The park will have a playground, a small lake "
    "and a path for bicycles. Work on the park will start in May and finish in October.",
    "Solar panels turn sunlight into electricity. They are made of silicon cells. When light hits the cells, "
    "electrons move and create a current. Many homes now use solar panels to lower their energy bills.",
    "The library will close early on Friday because of a staff meeting. It will open again on Saturday at "
    "nine in the morning. Books can still be returned in the box outside the front door.",
    "Bees are important for farming because they carry pollen from flower to flower. Without bees, many "
    "fruits and vegetables would not grow. Farmers sometimes rent bee hives to help their crops.",
    "The company released a new phone this week. The phone has a larger screen, a faster processor and a "
    "battery that lasts two days. It will be sold in stores from the first of June.",
    "Water boils at one hundred degrees Celsius at sea level. On a high mountain, water boils at a lower "
    "temperature because the air pressure is lower. This is why cooking pasta takes longer in the mountains.",
    "The school trip to the museum was a success. The students saw old paintings, a dinosaur skeleton and a "
    "model of the solar system. Everyone wrote a short report about their favourite room.",
]
_CHAT = [
    "What is the capital of France? Answer in one sentence.",
    "Give me three tips for sleeping better.",
    "Repeat this sentence exactly three times: The sky is blue and the grass is green.",
    "Write a short poem about the sea.",
    "List the days of the week, one per line.",
]


def code_prompts() -> list[list[dict]]:
    return [[{"role": "user", "content": f"{task}\n\n```\n{code}```"}] for task, code in _CODE]


def summary_prompts() -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Summarize this text in two sentences:\n\n{text}"}] for text in _TEXT
    ]


def chat_prompts() -> list[list[dict]]:
    return [[{"role": "user", "content": text}] for text in _CHAT]


def all_prompts() -> list[list[dict]]:
    """20 conversations: 8 code editing, 7 summarization, 5 chat."""
    return code_prompts() + summary_prompts() + chat_prompts()


def chat_token_ids(tokenizer, conversations: list[list[dict]]) -> list[dict]:
    """TokensPrompts for ``LLM.generate``: the chat template applied, as ``LLM.chat`` does."""
    out = []
    for conv in conversations:
        ids = tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        out.append({"prompt_token_ids": list(ids)})
    return out
