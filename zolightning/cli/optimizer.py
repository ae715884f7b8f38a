"""`zolightning optimizer ...`: inspect, import and re-target learned-optimizer files.

zolightning optimizer inspect FILE.safetensors
zolightning optimizer convert REF.pth OUT.safetensors --trust-pickle [--base-model ID] [--model NAME]
zolightning optimizer transfer SRC.safetensors OUT.safetensors --model NAME
"""

from __future__ import annotations

import argparse
import sys

from zolightning.variance import LearnedOptimizerFile, OptimizerFileError, UntrustedPickleError, convert_reference
from zolightning.variance.blocks import trainable_named_parameters
from zolightning.variance.transfer import transfer


def _model_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    from zolightning.models import load_causal_lm

    return [(n, tuple(p.shape)) for n, p in trainable_named_parameters(load_causal_lm(name))]


def _inspect(args: argparse.Namespace) -> None:
    print(LearnedOptimizerFile.load(args.file).summary())


def _convert(args: argparse.Namespace) -> None:
    shapes = dict(_model_shapes(args.model)) if args.model else None
    converted = convert_reference(
        args.reference, trust_pickle=args.trust_pickle, base_model=args.base_model, shapes=shapes
    )
    converted.save(args.out)
    print(f"wrote {args.out}\n{converted.summary()}")


def _transfer(args: argparse.Namespace) -> None:
    result = transfer(LearnedOptimizerFile.load(args.source), _model_shapes(args.model), base_model=args.model)
    result.save(args.out)
    print(f"wrote {args.out}\n{result.summary()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zolightning optimizer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="print a learned-optimizer file's summary")
    inspect.add_argument("file")
    inspect.set_defaults(run=_inspect)
    convert = commands.add_parser("convert", help="import a reference-release .pth (a pickle)")
    convert.add_argument("reference", help="the .pth file")
    convert.add_argument("out", help="the .safetensors file to write")
    convert.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling, which can run code: only for files from a trusted source",
    )
    convert.add_argument("--base-model", default="unknown", help="the model it was meta-trained for")
    convert.add_argument("--model", help="load this model to record the blocks' shapes")
    convert.set_defaults(run=_convert)
    move = commands.add_parser("transfer", help="re-target a file to another model of the same family")
    move.add_argument("source")
    move.add_argument("out")
    move.add_argument("--model", required=True, help="the target model (name, .gguf, directory or hub id)")
    move.set_defaults(run=_transfer)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (OptimizerFileError, UntrustedPickleError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
