"""The ``tokenleap`` command: generate, serve, pull, proposers, bench latency / throughput / serve.

Only argument parsing and printing live here; the work is done by ``LLM``, ``model.hub`` and
``tokenleap.bench``. Every bad argument exits with status 2 and a message naming the flag, the value
and what is allowed, before any model is loaded where that is possible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, get_args

DEFAULT_MODEL = "smollm2-135m-instruct"
# The default prompt: a code edit whose answer mostly repeats the prompt, where n-gram speculation pays.
DEFAULT_PROMPT = (
    "Rename the variable `x` to `total` in this Python function. Reply with the whole function only.\n\n"
    "def order_total(items):\n"
    "    x = 0\n"
    "    for item in items:\n"
    "        x += item.price * item.quantity\n"
    "    if x > 100:\n"
    "        x = x * 0.95\n"
    "    return x\n"
)
SPEC_EXAMPLE = '{"method": "ngram", "num_speculative_tokens": 5}'


class UsageError(Exception):
    """A bad argument found after parsing (needs the engine or the plugin manager to tell)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"argument {flag}: {message}")


# -- argument types: each failure names what is allowed (argparse adds the flag) ---------------------
def _int(kind: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {kind} integer (>= {minimum}), got {value}")
        return value

    parse.__name__ = f"{kind} int"
    return parse


positive_int = _int("a positive", 1)
nonneg_int = _int("a non-negative", 0)


def _float(low: float, high: float | None, low_open: bool = False):
    left, right = "(" if low_open else "[", "]" if high is not None else ")"
    allowed = f"{left}{low}, {high if high is not None else 'inf'}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {allowed}, got {text!r}") from None
        if (
            math.isnan(value)
            or value < low
            or (low_open and value == low)
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected a number in {allowed}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc.msg} at char {exc.pos}): {text!r}; "
            f"expected an object such as '{SPEC_EXAMPLE}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{SPEC_EXAMPLE}', got {text!r}")
    return value


def dataset_name(text: str) -> str:
    from tokenleap.bench.prompts import DATASETS

    if text.startswith("jsonl:"):
        path = Path(text.removeprefix("jsonl:")).expanduser()
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text!r}: no file at {str(path)!r}")
        return f"jsonl:{path}"
    if text not in DATASETS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(DATASETS)}")
    return text


# -- parser -------------------------------------------------------------------------------------------
def _engine_args(p: argparse.ArgumentParser) -> None:
    from tokenleap.config import DType

    g = p.add_argument_group("engine")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"local checkpoint folder, .gguf file, or alias (default: {DEFAULT_MODEL})",
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    g.add_argument(
        "--speculative-config",
        type=json_object,
        default=None,
        metavar="JSON",
        help=f"speculative decoding settings, e.g. '{SPEC_EXAMPLE}'",
    )
    g.add_argument("--dtype", choices=get_args(DType), default="auto")
    g.add_argument("--max-model-len", type=_int("an", 2), default=None, metavar="N")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    g.add_argument("--tensor-parallel-size", "-tp", type=positive_int, default=None, metavar="N",
                   help="split the model over N processes (GPUs on CUDA); docs/tensor-parallel.md")
    g.add_argument(
        "--load-format",
        choices=["auto", "safetensors", "gguf", "dummy"],
        default="auto",
        help="'dummy': random weights of the model's shape (only config.json is read)",
    )
    g.add_argument("--seed", type=int, default=0, help="engine seed (sampling, random prompts)")
    g.add_argument("--max-num-seqs", type=positive_int, default=None, metavar="N")
    g.add_argument("--max-num-batched-tokens", type=positive_int, default=None, metavar="N")
    g.add_argument("--kv-cache-memory-bytes", type=positive_int, default=None, metavar="BYTES")
    g.add_argument(
        "--gpu-memory-utilization", type=_float(0.0, 1.0, low_open=True), default=None, metavar="F"
    )
    g.add_argument("--attention-backend", choices=["auto", "torch", "triton", "cpu"], default=None)
    g.add_argument("--quantization", choices=["int8", "int4"], default=None,
                   help="weight-only int8 / int4 linears on the CPU, bfloat16 activations")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument(
        "--log-stats",
        action="store_true",
        help="log an 'engine stats' line (throughput, acceptance) every few seconds while running",
    )


def _server_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    g.add_argument("--port", type=_port, default=8000, help="port to bind (default 8000)")
    g.add_argument(
        "--api-key",
        default=os.environ.get("TOKENLEAP_API_KEY"),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $TOKENLEAP_API_KEY, else no key)",
    )
    g.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="model name(s) clients send in 'model' (default: the model argument)",
    )
    g.add_argument(
        "--stream-interval",
        type=positive_int,
        default=1,
        metavar="N",
        help="output tokens per streamed chunk of a request (default 1: every step; more: fewer chunks when many "
        "clients stream from a fast model; a request's first tokens and its end are sent at once)",
    )
    g.add_argument(
        "--engine-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the engine in a process of its own (default), so that HTTP work and the engine's Python do not "
        "take turns on one GIL; --no-engine-process runs it in a thread of the server's process",
    )


def _port(text: str) -> int:
    value = _int("a", 0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {value}")
    return value


def _sampling_args(p: argparse.ArgumentParser, max_tokens: bool) -> None:
    g = p.add_argument_group("sampling")
    if max_tokens:
        g.add_argument(
            "--max-tokens",
            type=positive_int,
            default=128,
            metavar="N",
            help="tokens to generate per completion (default 128)",
        )
    g.add_argument(
        "--temperature", type=_float(0.0, None), default=0.0, metavar="T", help="0 = greedy (default)"
    )
    g.add_argument("--top-p", type=_float(0.0, 1.0, low_open=True), default=1.0, metavar="P")
    g.add_argument("--top-k", type=_int("a", -1), default=0, metavar="K", help="0 or -1 disables")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenleap", description="tokenleap: LLM inference with speculative decoding"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser(
        "generate",
        help="generate text for prompts and print speed and acceptance figures",
        description="Generate text; prints the outputs, then tokens, wall time, tokens/s and, "
        "with --speculative-config, acceptance figures.",
    )
    _engine_args(g)
    _sampling_args(g, max_tokens=True)
    g.add_argument("--prompt", action="append", default=None, metavar="TEXT", help="a prompt (repeatable)")
    g.add_argument(
        "--prompts-file",
        type=Path,
        default=None,
        metavar="FILE",
        help=".jsonl with a 'prompt' (or 'text') field per line, or .txt with one prompt per line",
    )
    g.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send each prompt as a user message through the chat template (default: on when the "
        "model's tokenizer has a chat template, i.e. for instruct models)",
    )
    g.add_argument("--n", type=positive_int, default=1, help="completions per prompt")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    g.set_defaults(func=cmd_generate, parser=g)

    p = sub.add_parser("pull", help="download a model alias into the cache and print its path")
    from tokenleap.model.hub import MODEL_ALIASES

    p.add_argument(
        "alias",
        metavar="ALIAS",
        choices=sorted(MODEL_ALIASES),
        help=f"one of: {', '.join(sorted(MODEL_ALIASES))}",
    )
    p.set_defaults(func=cmd_pull, parser=p)

    pr = sub.add_parser("proposers", help="list installed speculative methods")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_proposers, parser=pr)

    sv = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (chat, completions, streaming, /metrics)",
        description="Serves MODEL over HTTP: /v1/chat/completions, /v1/completions, /v1/models, /health, "
        "/metrics. Point the official openai client at http://HOST:PORT/v1.",
    )
    sv.add_argument("model_tag", nargs="?", default=None, metavar="MODEL", help="the model (or use --model)")
    _engine_args(sv)
    _server_args(sv)
    sv.add_argument(
        "--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info", help="uvicorn's"
    )
    sv.set_defaults(func=cmd_serve, parser=sv)

    b = sub.add_parser("bench", help="latency / throughput / serving benchmarks")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH", required=True)
    lat = bsub.add_parser(
        "latency",
        help="median / p90 latency of one batch, fixed output length",
        description="Runs the same batch num-iters times (after warm-up), each to exactly "
        "--output-len tokens (EOS ignored), and reports ms per output token.",
    )
    thr = bsub.add_parser(
        "throughput",
        help="requests/s and tokens/s with many requests at once",
        description="Submits --num-prompts requests at once (continuous batching).",
    )
    for sp, default_dataset in ((lat, "random"), (thr, "random")):
        _engine_args(sp)
        _sampling_args(sp, max_tokens=False)
        sp.add_argument(
            "--dataset",
            type=dataset_name,
            default=default_dataset,
            help="random | mtbench | humaneval | sharegpt | code-editing | module-editing | summarization | jsonl:PATH",
        )
        sp.add_argument(
            "--input-len",
            type=positive_int,
            default=32,
            metavar="N",
            help="prompt tokens for --dataset random (text data sets are used as they are)",
        )
        sp.add_argument("--output-len", type=positive_int, default=128, metavar="N")
        sp.add_argument("--chat", action="store_true", help="wrap text prompts in the chat template")
        sp.add_argument(
            "--ignore-eos",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="generate exactly --output-len tokens (default on)",
        )
        sp.add_argument(
            "--output-json", type=Path, default=None, metavar="PATH", help="also write the result here"
        )
    lat.add_argument("--batch-size", type=positive_int, default=8, metavar="B")
    lat.add_argument("--num-iters", type=positive_int, default=10, metavar="N")
    lat.add_argument("--num-iters-warmup", type=nonneg_int, default=2, metavar="N")
    lat.set_defaults(func=cmd_bench_latency, parser=lat)
    thr.add_argument("--num-prompts", type=positive_int, default=100, metavar="N")
    thr.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the 4-token warm-up request"
    )
    thr.set_defaults(func=cmd_bench_throughput, parser=thr)
    _bench_serve_parser(bsub)
    return parser


def _rate(text: str) -> float:
    if text.lower() == "inf":
        return float("inf")
    return _float(0.0, None, low_open=True)(text)


_rate.__name__ = "rate"


def _bench_serve_parser(bsub) -> None:
    bs = bsub.add_parser(
        "serve",
        help="TTFT / ITL / tokens/s of an OpenAI-compatible server under load",
        description="Streams requests to a server at each --concurrency and --request-rate and reports output "
        "tokens/s, TTFT, ITL and TPOT (p50/p90/p99). Without --base-url it starts `tokenleap serve` with the "
        "engine options given, once without speculation and once with --speculative-config (when given).",
    )
    _engine_args(bs)
    g = bs.add_argument_group("benchmark")
    g.add_argument("--base-url", default=None, metavar="URL", help="benchmark this running server instead")
    g.add_argument("--api-key", default=os.environ.get("TOKENLEAP_API_KEY"), metavar="KEY")
    g.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    g.add_argument(
        "--dataset",
        type=dataset_name,
        default="random",
        help="random | mtbench | humaneval | sharegpt | code-editing | module-editing | summarization | jsonl:PATH",
    )
    g.add_argument("--input-len", type=positive_int, default=32, metavar="N", help="prompt tokens for random")
    g.add_argument("--output-len", type=positive_int, default=128, metavar="N")
    g.add_argument("--num-prompts", type=positive_int, default=64, metavar="N", help="requests per level")
    g.add_argument("--concurrency", type=positive_int, nargs="+", default=[1], metavar="C",
                   help="most requests in flight (several: one run each; default 1)")
    g.add_argument("--request-rate", type=_rate, nargs="+", default=[float("inf")], metavar="R",
                   help="requests per second, Poisson arrivals; inf = all at once (default)")
    g.add_argument("--temperature", type=_float(0.0, 2.0), default=0.0, metavar="T")
    g.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="generate exactly --output-len tokens (default on)")
    g.add_argument("--no-plain", action="store_true", help="with --speculative-config: skip the run without it")
    g.add_argument("--server-timeout", type=positive_int, default=600, metavar="S",
                   help="seconds to wait for a started server to be ready")
    g.add_argument("--output-json", type=Path, default=None, metavar="PATH", help="also write the result here")
    bs.set_defaults(func=cmd_bench_serve, parser=bs)


# -- building the engine -------------------------------------------------------------------------------
_ENGINE_FLAGS = (
    "tokenizer",
    "dtype",
    "max_model_len",
    "device",
    "enforce_eager",
    "tensor_parallel_size",
    "load_format",
    "seed",
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_memory_bytes",
    "gpu_memory_utilization",
    "attention_backend",
    "quantization",
    "enable_prefix_caching",
)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _validation_message(exc: Any) -> tuple[str, str]:
    """(flag, message) for the first error of a pydantic ValidationError whose fields are CLI flags."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    msg = err["msg"].removeprefix("Value error, ")
    return (_flag(field) if field else "arguments"), f"invalid value {err.get('input')!r}: {msg}"


def check_speculative_config(cfg: dict[str, Any] | None) -> None:
    """Validate --speculative-config (method installed, keys known) without loading a model."""
    if cfg is None:
        return
    from tokenleap_plugins import ProposerManager

    from tokenleap.speculative.config import resolve_speculative_config

    try:
        resolve_speculative_config(cfg, ProposerManager())
    except (ValueError, TypeError) as exc:
        raise UsageError("--speculative-config", str(exc)) from None


def make_llm(args: argparse.Namespace):
    from tokenleap import LLM

    return _build(args, lambda kwargs: LLM(**kwargs))


def _llm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    check_speculative_config(args.speculative_config)
    kwargs = {k: getattr(args, k) for k in _ENGINE_FLAGS if getattr(args, k, None) is not None}
    kwargs["disable_log_stats"] = not getattr(args, "log_stats", False)
    return dict(model=args.model, speculative_config=args.speculative_config, **kwargs)


def _build(args: argparse.Namespace, make: Any):
    """make(LLM keyword arguments), its errors as UsageErrors naming the argument."""
    import pydantic

    try:
        return make(_llm_kwargs(args))
    except pydantic.ValidationError as exc:
        raise UsageError(*_validation_message(exc)) from None
    except FileNotFoundError as exc:
        raise UsageError("--model", str(exc)) from None
    except ValueError as exc:
        raise UsageError("arguments", str(exc)) from None


def _sampling_params(args: argparse.Namespace, **extra: Any):
    import pydantic

    from tokenleap import SamplingParams

    try:
        return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, **extra)
    except pydantic.ValidationError as exc:
        raise UsageError(*_validation_message(exc)) from None


def _acceptance(llm) -> dict[str, Any] | None:
    from tokenleap.bench import acceptance_snapshot, speculation_enabled

    return acceptance_snapshot(llm.get_metrics()).to_dict() if speculation_enabled(llm) else None


def _finite(obj: Any) -> Any:
    """JSON has no NaN / inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _print_acceptance(acc: dict[str, Any] | None, out) -> None:
    if acc is None:
        return
    print(f"mean acceptance length: {acc['mean_acceptance_length']:.3f} tokens per step", file=out)
    print(
        f"draft acceptance rate: {acc['draft_acceptance_rate']:.1%} ({acc['num_accepted_tokens']} of "
        f"{acc['num_draft_tokens']} draft tokens, {acc['num_drafts']} drafting steps)",
        file=out,
    )
    rates = ", ".join(f"{r:.2f}" for r in acc["per_position_acceptance_rate"]) or "-"
    print(f"per-position acceptance: [{rates}]", file=out)


# -- commands -------------------------------------------------------------------------------------------
def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    f = args.prompts_file
    if f is not None:
        if not f.is_file():
            raise UsageError("--prompts-file", f"no file at {str(f)!r}")
        if f.suffix == ".jsonl":
            from tokenleap.bench.prompts import load_jsonl

            try:
                prompts += load_jsonl(f)
            except ValueError as exc:
                raise UsageError("--prompts-file", str(exc)) from None
        elif f.suffix == ".txt":
            prompts += [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            raise UsageError("--prompts-file", f"{str(f)!r}: expected a .jsonl or .txt file")
        if not prompts:
            raise UsageError("--prompts-file", f"{str(f)!r} holds no prompts")
    return prompts or [DEFAULT_PROMPT]


def cmd_generate(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    params = _sampling_params(args, max_tokens=args.max_tokens, n=args.n, seed=args.seed)
    t0 = time.perf_counter()
    llm = make_llm(args)
    load_s = time.perf_counter() - t0
    start = time.perf_counter()
    tok = llm.get_tokenizer()
    chat = args.chat if args.chat is not None else bool(getattr(tok, "chat_template", None))
    if chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    else:
        outputs = llm.generate(prompts, params)
    wall = time.perf_counter() - start
    n_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    acc = _acceptance(llm)
    if args.json:
        result = {
            "model": args.model,
            "speculative_config": args.speculative_config,
            "chat": chat,
            "outputs": [
                {
                    "prompt": p,
                    "completions": [
                        {"text": c.text, "num_tokens": len(c.token_ids), "finish_reason": c.finish_reason}
                        for c in o.outputs
                    ],
                }
                for p, o in zip(prompts, outputs, strict=True)
            ],
            "num_prompts": len(prompts),
            "num_generated_tokens": n_tokens,
            "load_time_s": load_s,
            "wall_time_s": wall,
            "tokens_per_s": n_tokens / wall if wall > 0 else None,
            "acceptance": acc,
        }
        print(json.dumps(_finite(result), indent=2))
        return 0
    out = sys.stdout
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        print(f"=== prompt {i + 1}/{len(prompts)} ===", file=out)
        print(p.rstrip("\n"), file=out)
        for c in o.outputs:
            label = f"output {c.index + 1}" if len(o.outputs) > 1 else "output"
            print(f"--- {label} ({len(c.token_ids)} tokens, finish: {c.finish_reason}) ---", file=out)
            print(c.text.rstrip("\n"), file=out)
    print("=== summary ===", file=out)
    print(f"tokens generated: {n_tokens}", file=out)
    print(f"wall time: {wall:.3f} s (model load {load_s:.1f} s, not included)", file=out)
    print(f"tokens/s: {n_tokens / wall:.1f}" if wall > 0 else "tokens/s: -", file=out)
    if args.speculative_config is not None:
        print(f"speculative config: {json.dumps(args.speculative_config)}", file=out)
    _print_acceptance(acc, out)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from tokenleap.model.hub import pull

    print(pull(args.alias, progress=True))
    return 0


def cmd_proposers(args: argparse.Namespace) -> int:
    """Installed methods (package, version, whether TOKENLEAP_PLUGINS allows them, the package's summary) and the
    repository's methods that are not installed, with the folder to install them from. Imports no plugin."""
    from tokenleap_plugins import PLUGINS_ENV_VAR, ProposerManager
    from tokenleap_plugins.manager import KNOWN_PACKAGES

    installed = ProposerManager().installed_methods()
    have = {m.method for m in installed}
    missing = {m: folder for m, folder in KNOWN_PACKAGES.items() if m not in have}
    if args.json:
        print(json.dumps({
            "installed": [{"method": m.method, "package": m.package, "version": m.version, "allowed": m.allowed,
                           "description": m.description} for m in installed],
            "not_installed": [{"method": m, "folder": folder, "install": f"pip install ./{folder}"}
                              for m, folder in sorted(missing.items())],
        }, indent=2))
        return 0
    if installed:
        w = max(len("method"), *(len(m.method) for m in installed))
        wp = max(len("package"), *(len(m.package) for m in installed))
        wv = max(len("version"), *(len(m.version) for m in installed))
        print(f"{'method':<{w}}  {'package':<{wp}}  {'version':<{wv}}  description")
        for m in installed:
            blocked = f"  [not allowed by {PLUGINS_ENV_VAR}]" if not m.allowed else ""
            print(f"{m.method:<{w}}  {m.package:<{wp}}  {m.version:<{wv}}  {m.description}{blocked}")
    else:
        print("no speculative methods installed")
    if missing:
        print("\nnot installed (from a clone of the tokenleap repository):")
        by_folder: dict[str, list[str]] = {}
        for m, folder in sorted(missing.items()):
            by_folder.setdefault(folder, []).append(m)
        for folder, methods in by_folder.items():
            print(f"  {', '.join(methods)}: pip install ./{folder}")
    return 0


def _bench_prompts(args: argparse.Namespace, llm, num: int) -> list[Any]:
    from tokenleap.bench import build_prompts

    try:
        return build_prompts(llm, args.dataset, num, args.input_len, seed=args.seed, chat=args.chat)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError("--dataset", str(exc)) from None


def _bench_config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "model",
        "dataset",
        "speculative_config",
        "input_len",
        "output_len",
        "temperature",
        "top_p",
        "top_k",
        "ignore_eos",
        "chat",
        "seed",
        "load_format",
        "dtype",
        "device",
    )
    return {k: getattr(args, k) for k in keys}


def _write_bench(args: argparse.Namespace, llm, result: dict[str, Any]) -> None:
    cfg = _bench_config(args)
    cfg["resolved_device"] = str(llm.engine.device)
    doc = _finite({"benchmark": args.bench, "config": cfg, **result})
    text = json.dumps(doc, indent=2)
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(text + "\n")
    print(text)


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from tokenleap.bench.latency import run_latency

    _sampling_params(args)  # fail on bad sampling values before loading the model
    llm = make_llm(args)
    prompts = _bench_prompts(args, llm, args.batch_size)
    res = run_latency(
        llm,
        prompts,
        args.output_len,
        num_iters=args.num_iters,
        num_iters_warmup=args.num_iters_warmup,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        ignore_eos=args.ignore_eos,
    )
    doc = res.to_dict()
    _write_bench(args, llm, doc)
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from tokenleap.bench.throughput import run_throughput

    _sampling_params(args)
    llm = make_llm(args)
    prompts = _bench_prompts(args, llm, args.num_prompts)
    res = run_throughput(
        llm,
        prompts,
        args.output_len,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        ignore_eos=args.ignore_eos,
        warmup=args.warmup,
    )
    _write_bench(args, llm, res.to_dict())
    return 0


def _need_server_deps(flag: str) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(flag, f"the server needs {exc.name}: pip install 'tokenleap[serve]'") from None


def cmd_serve(args: argparse.Namespace) -> int:
    if args.model_tag is not None:
        if args.model != DEFAULT_MODEL and args.model != args.model_tag:
            raise UsageError("--model", f"{args.model!r} and the positional MODEL {args.model_tag!r} differ; give one")
        args.model = args.model_tag
    _need_server_deps("serve")
    from tokenleap.async_llm import AsyncLLM
    from tokenleap.server.launch import serve, switch_interval_s

    try:  # a bad TOKENLEAP_SWITCH_INTERVAL_S fails before the model loads
        interval = switch_interval_s()
    except ValueError as exc:
        raise UsageError("serve", str(exc)) from None
    if args.engine_process:
        from tokenleap.config import EngineConfig
        from tokenleap.engine_core.async_client import ProcessAsyncLLM

        def make(kwargs: dict[str, Any]) -> ProcessAsyncLLM:
            EngineConfig(**kwargs)  # a bad argument fails here, named, before the engine process starts
            return ProcessAsyncLLM(stream_interval=args.stream_interval, **kwargs)

        llm = _build(args, make)
    else:
        llm = AsyncLLM.from_llm(make_llm(args), args.stream_interval)
    serve(llm, args.served_model_name or [args.model], host=args.host, port=args.port, api_key=args.api_key,
          log_level=args.log_level, switch_interval=interval)
    return 0


def _engine_argv(args: argparse.Namespace) -> list[str]:
    """The engine flags of ``args`` as a command line (for a ``tokenleap serve`` subprocess)."""
    argv = ["--model", args.model]
    for name in _ENGINE_FLAGS:
        value = getattr(args, name, None)
        if value is None or value is False and name != "enable_prefix_caching":
            continue
        if isinstance(value, bool):
            argv.append(_flag(name) if value else "--no-" + _flag(name)[2:])
        else:
            argv += [_flag(name), str(value)]
    return argv


def cmd_bench_serve(args: argparse.Namespace) -> int:
    import contextlib

    from tokenleap.bench import prompts as P
    from tokenleap.bench.serve import compare, run_client, run_level, server_info
    from tokenleap.bench.server_process import ServerProcess

    if args.base_url is not None:
        runs = [("server", None)]
    else:
        _need_server_deps("bench serve")
        check_speculative_config(args.speculative_config)
        runs = [] if args.no_plain and args.speculative_config else [("plain", None)]
        if args.speculative_config is not None:
            runs.append(("speculative", args.speculative_config))
    if args.no_plain and args.speculative_config is None:
        raise UsageError("--no-plain", "needs --speculative-config (there would be nothing to run)")
    text_prompts = None
    if args.dataset != "random":
        try:
            text_prompts = P.load_prompts(args.dataset, args.num_prompts)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError("--dataset", str(exc)) from None
    elif args.endpoint == "chat":
        raise UsageError("--endpoint", "chat needs a text data set (--dataset), not random token ids")
    results: dict[str, list[dict[str, Any]]] = {}
    servers: dict[str, Any] = {}
    for label, spec in runs:
        if args.base_url is not None:
            ctx = contextlib.nullcontext(args.base_url.rstrip("/"))
        else:
            serve_args = _engine_argv(args)
            if spec is not None:
                serve_args += ["--speculative-config", json.dumps(spec)]
            ctx = ServerProcess(serve_args, startup_timeout_s=args.server_timeout)
        with ctx as url:
            info = run_client(server_info(url, args.api_key))
            servers[label] = info
            prompts = text_prompts or [p["prompt_token_ids"] for p in P.random_token_prompts(
                args.num_prompts, args.input_len, info["vocab_size"], seed=args.seed)]
            common = dict(output_len=args.output_len, endpoint=args.endpoint, temperature=args.temperature,
                          ignore_eos=args.ignore_eos, api_key=args.api_key, seed=args.seed, label=label)
            run_client(run_level(url, info["id"], prompts[:1], concurrency=1, request_rate=float("inf"),
                                  **{**common, "output_len": 4}))  # warm-up, not counted
            results[label] = []
            for c in args.concurrency:
                for rate in args.request_rate:
                    res = run_client(run_level(url, info["id"], prompts, concurrency=c, request_rate=rate, **common))
                    results[label].append(res.to_dict())
                    print(f"[{label}] concurrency={c} rate={rate}: {res.output_tokens_per_s:.1f} output tok/s, "
                          f"TTFT p50 {res.ttft_ms['p50']:.1f} ms, ITL p50 {res.itl_ms['p50']:.2f} ms, "
                          f"failed {res.num_failed}", file=sys.stderr)
    config = {k: getattr(args, k) for k in ("model", "base_url", "endpoint", "dataset", "input_len", "output_len",
                                            "num_prompts", "concurrency", "temperature", "ignore_eos", "seed",
                                            "speculative_config")}
    config["request_rate"] = [None if r == float("inf") else r for r in args.request_rate]
    doc = {"benchmark": "serve", "config": config, "servers": servers, "runs": results}
    if "plain" in results and "speculative" in results:
        doc["speculative_vs_plain"] = compare(results["plain"], results["speculative"])
    text = json.dumps(_finite(doc), indent=2)
    if args.output_json is not None:
        args.output_json.parent.mkdir(parents=True, exist_ok=True)
        args.output_json.write_text(text + "\n")
    print(text)
    return 0 if all(r["num_failed"] == 0 for rs in results.values() for r in rs) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 failure while running, 2 bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2, message already printed)
        return int(exc.code or 0)
    try:
        return args.func(args)
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure while running: one line, not a traceback (TOKENLEAP_DEBUG=1 for one)
        if os.environ.get("TOKENLEAP_DEBUG"):
            raise
        print(f"tokenleap: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
