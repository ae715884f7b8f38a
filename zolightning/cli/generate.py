"""`zolightning generate`: answer prompts with a fine-tuned model, through its chat template where it has one.

    zolightning generate logs/sst2-mezo/version_0/checkpoints/last.ckpt "Is this review positive? A fine film."
    zolightning generate exported/sst2 --file prompts.txt        # one prompt a line; `-` reads standard input
    zolightning generate smollm2-135m-instruct "Hello" --raw     # any model name; --raw: no chat template

A checkpoint is read weights-only (as every command does) and its LoRA is used as trained; an exported directory,
a model name or path is loaded as `zolightning fit --model.model` would load it. Decoding is greedy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zolightning generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a .ckpt of zolightning fit, an exported directory, or a model name/path")
    parser.add_argument("prompts", nargs="*", help="prompts to answer (or --file)")
    parser.add_argument("--file", help="a text file of prompts, one a line; - for standard input")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--raw", action="store_true", help="the prompt as it is, without the chat template")
    return parser


def load(model: str):
    """(model, tokenizer) from a checkpoint, an exported directory or a model name."""
    from zolightning.models import load_causal_lm, load_tokenizer

    if model.endswith(".ckpt"):
        from zolightning.cli.export import load_module

        module = load_module(model, Path(model), trust_pickle=False, overrides={})
        return module.model.eval(), load_tokenizer(module.hparams.model)
    return load_causal_lm(model), load_tokenizer(model)


def as_model_input(tokenizer, prompt: str, raw: bool) -> str:
    """The prompt through the tokenizer's chat template (one user turn, then the assistant's turn), if it has one."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return prompt
    turn = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(
        **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0
    )
    return tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prompts = list(args.prompts)
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        print("error: no prompt: give one or more, or --file", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load(args.model)
    except (ValueError, FileNotFoundError, PermissionError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for prompt in prompts:
        print(answer(model, tokenizer, as_model_input(tokenizer, prompt, args.raw), args.max_new_tokens), flush=True)
    return 0
