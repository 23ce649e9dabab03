"""``tokenleap-eagle``: train an EAGLE-3 head for a target the engine runs."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from tokenleap_eagle.train.loop import TrainArgs

    d = TrainArgs(target="", out="")
    p = argparse.ArgumentParser(prog="tokenleap-eagle", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an EAGLE-3 head on the target's own answers to ShareGPT prompts")
    t.add_argument("--head", choices=["eagle3", "mlp_speculator"], default="eagle3",
                   help="eagle3 (default), or mlp_speculator: IBM's MLP speculator, whose own options are listed by "
                        "`tokenleap-eagle train --head mlp_speculator --help`")
    t.add_argument("--target", required=True, help="the target model: a folder, a .gguf file or an alias")
    t.add_argument("--out", required=True, help="output folder (the head, checkpoints, generated data)")
    t.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    t.add_argument("--num-prompts", type=int, default=d.num_prompts)
    t.add_argument("--prompts", default=None,
                   help="a JSON file with a list of prompt strings to answer (default: ShareGPT turns)")
    t.add_argument("--sharegpt-turns", default=d.sharegpt_turns, choices=["first", "all"],
                   help="the ShareGPT human turns used as prompts: each conversation's first (8,657), or all of "
                        "them (51,327)")
    t.add_argument("--max-tokens", type=int, default=d.max_tokens, help="answer tokens generated per prompt")
    t.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    t.add_argument("--gen-batch-size", type=int, default=d.gen_batch_size)
    t.add_argument("--gen-waves", action="store_true",
                   help="generate the answers in waves of --gen-batch-size prompts (shortest first) instead of one "
                        "continuous batch: fewer steps that mix admissions with decoding")
    t.add_argument("--draft-vocab-size", type=int, default=d.draft_vocab_size)
    t.add_argument("--aux-layers", type=int, nargs=3, default=None, help="default: 2, N // 2, N - 3")
    t.add_argument("--ttt-steps", type=int, default=d.ttt_steps, help="draft steps unrolled in training")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    t.add_argument("--feature-cache-gb", type=float, default=d.feature_cache_gb,
                   help="keep the target's captured hidden states up to this size (on the training device) "
                        "instead of recomputing them every epoch")
    t.add_argument("--max-train-minutes", type=float, default=None,
                   help="stop training after this many minutes and write the head as it is")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt and OUT/sequences.json")
    t.add_argument("--no-progress", action="store_true")
    return p


def _head_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--head" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--head="):
            return a.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and _head_of(argv) == "mlp_speculator":  # its own options: train/mlp_speculator.py
        from tokenleap_eagle.train import mlp_speculator

        rest = [a for i, a in enumerate(argv[1:], 1)
                if not (a.startswith("--head=") or a == "--head" or (i > 1 and argv[i - 1] == "--head"))]
        return mlp_speculator.main(rest, prog="tokenleap-eagle train --head mlp_speculator")
    from tokenleap_eagle.train.loop import TrainArgs, train

    args = _parser().parse_args(argv)
    targs = TrainArgs(
        target=args.target, out=args.out, device=args.device, num_prompts=args.num_prompts,
        prompts=args.prompts, sharegpt_turns=args.sharegpt_turns, max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        gen_batch_size=args.gen_batch_size, gen_waves=args.gen_waves,
        draft_vocab_size=args.draft_vocab_size, aux_layers=tuple(args.aux_layers) if args.aux_layers else None,
        ttt_steps=args.ttt_steps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        max_train_minutes=args.max_train_minutes, feature_cache_gb=args.feature_cache_gb, resume=args.resume,
        progress=not args.no_progress,
    )
    try:
        out = train(targs)
    except (ValueError, FileNotFoundError) as e:
        print(f"tokenleap-eagle train: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote the EAGLE-3 head to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
