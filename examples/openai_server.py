"""An OpenAI-compatible server with speculation, used through the official openai client.

    python examples/openai_server.py [--max-tokens 64] [--model smollm2-135m-instruct]

Starts `tokenleap serve` on 127.0.0.1 (a free port), waits for /health, sends a chat request and a streamed
one, prints the answers with the request's own acceptance figures, and stops the server.
"""

import argparse
import socket
import subprocess
import sys
import time
import urllib.request

from openai import OpenAI

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--max-tokens", type=int, default=48)
parser.add_argument("--model", default="smollm2-135m-instruct")
args = parser.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "tokenleap.cli", "serve", args.model, "--host", "127.0.0.1",
                           "--port", str(port), "--max-model-len", "1024", "--speculative-config",
                           '{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}'])
try:
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.5)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    messages = [{"role": "user", "content": "Repeat this list back: apples, pears, plums, cherries."}]
    r = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens,
                                       temperature=0)
    print("answer:", r.choices[0].message.content)
    print("usage:", r.usage.completion_tokens, "tokens; spec_decode:", r.model_extra.get("spec_decode"))
    chunks = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens,
                                            temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    print("streamed the same text:", streamed == r.choices[0].message.content)
finally:
    server.terminate()
    server.wait(timeout=30)
