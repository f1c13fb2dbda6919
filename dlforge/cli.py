"""The ``dlforge`` command: ``run``, ``train``, ``evaluate``, ``quantize``, ``compress``,
``bench``, ``report``, ``models``.

Every failure ends in one line on stderr naming what went wrong, never a traceback unless
``--debug`` asks for it: exit 2 for bad input (recipe, data, checkpoint, file), exit 1 for a stage
that failed after the run started (its error is recorded in ``metrics.json`` and the report) or
for an unexpected error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from dlforge.config import DlforgeError

# Only the error base is imported here, so that `dlforge --help` answers without loading torch.
BAD_INPUT, STAGE_FAILED = 2, 1


def _set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=example
    )


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", nargs="?", default=None, help="YAML recipe (default: built-in defaults)"
    )
    _set_option(p, "override a recipe field, e.g. --set train.optimizer.lr=0.01 (repeatable)")


def _checkpoint_arg(
    p: argparse.ArgumentParser, text: str = "a .safetensors checkpoint written by dlforge"
) -> None:
    p.add_argument("checkpoint", help=text)
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow a checkpoint that names a package.module:function model factory to import "
        "and run it (only for files you trust; registered models never need this)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlforge", description="Train, evaluate, compress and deploy PyTorch models."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole job: data, train, evaluate, report")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("train", help="data and training only; writes checkpoints")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint, rebuilt from its own metadata")
    _checkpoint_arg(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-path", default=None, help="read the same kind of data from here")
    p.add_argument("--out", default=None, help="write the metrics JSON here")

    p = sub.add_parser("quantize", help="int8 PTQ of a checkpoint, exported to ONNX (QDQ)")
    _checkpoint_arg(p)
    _set_option(p, "quantize settings, e.g. --set quantize.observer=mse")
    p.add_argument("--bench", action="store_true", help="also benchmark fp32 and int8")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the ONNX files and quantize.json (default: the run folder's deploy/)",
    )

    p = sub.add_parser(
        "compress", help="prune / low-rank / Deep Compression / distill a checkpoint"
    )
    _checkpoint_arg(p)
    p.add_argument("--recipe", default=None, help="a recipe whose compress: section to run")
    _set_option(p, "compress settings, e.g. --set compress.prune.sparsity=0.8")

    p = sub.add_parser("bench", help="latency, throughput, memory, size and accuracy of variants")
    _checkpoint_arg(p, "the fp32 checkpoint (its eager model is the baseline)")
    p.add_argument(
        "--onnx",
        nargs="*",
        default=None,
        help="ONNX files to compare (default: the run folder's deploy/*.onnx)",
    )
    _set_option(p, "harness settings, e.g. --set bench.threads=1")
    p.add_argument("--out", default=None, help="write the rows as JSON here")

    p = sub.add_parser("report", help="re-render a run folder's report.html from metrics.json")
    p.add_argument("run_dir")

    sub.add_parser("models", help="list the registered models")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except Exception as exc:
        if args.debug:
            raise
        return _report_failure(args.command, exc)


def _report_failure(command: str, exc: Exception) -> int:
    """One line on stderr; the exit code says whether the input or a stage was at fault."""
    from dlforge.pipeline import StageError

    text = " ".join(str(exc).split())
    if isinstance(exc, StageError):
        print(f"dlforge {command}: error: {text}", file=sys.stderr)
        return STAGE_FAILED
    if isinstance(exc, DlforgeError | FileNotFoundError):
        print(f"dlforge {command}: error: {text}", file=sys.stderr)
        return BAD_INPUT
    print(
        f"dlforge {command}: unexpected error: {type(exc).__name__}: {text} "
        "(run with --debug for the traceback)",
        file=sys.stderr,
    )
    return STAGE_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    # Imported here so `dlforge --help` answers without loading torch.
    from dlforge import pipeline
    from dlforge.recipe import load_recipe
    from dlforge.train import atomic_write_json

    if args.command == "run":
        recipe = load_recipe(args.recipe, args.overrides)
        outcome = pipeline.run(recipe, resume=args.resume)
        summary = outcome.metrics["evaluate"]["summary"]
        print(f"run folder: {outcome.run_dir}")
        print(
            f"test accuracy {summary['accuracy']:.4f}  macro F1 {summary['f1_macro']:.4f}  "
            f"time {outcome.metrics['timings']['total']:.1f}s"
        )
        if recipe.report.enabled:
            print(f"report: {outcome.report_path}")
        return 0
    if args.command == "train":
        recipe = load_recipe(args.recipe, args.overrides)
        result = pipeline.train(recipe, resume=args.resume)
        print(f"checkpoint: {result['model']['checkpoint']}")
        return 0
    if args.command == "evaluate":
        result = pipeline.evaluate_checkpoint(
            args.checkpoint, args.split, args.data_path, args.trust_code
        )
        if args.out:
            atomic_write_json(args.out, result)
        print(json.dumps(result["summary"], indent=2))
        return 0
    if args.command == "quantize":
        result = pipeline.quantize_checkpoint(
            args.checkpoint, args.overrides, args.out, args.bench, args.trust_code
        )
        acc = result["quantize"]["accuracy"]
        print(
            f"accuracy fp32 {acc['fp32']:.4f}  fake-quant {acc['fake_quant']:.4f}  "
            f"ONNX Runtime int8 {acc['onnxruntime_int8']:.4f}"
        )
        for name, path in result["quantize"]["files"].items():
            print(f"{name}: {path}")
        for row in result.get("bench", {}).get("rows", []):
            print(
                f"{row['variant']:<28} p50 {row['latency_p50_ms']:.3f} ms  "
                f"{row['throughput_x']:.2f}x throughput"
            )
        return 0
    if args.command == "compress":
        result = pipeline.compress_checkpoint(
            args.checkpoint, args.recipe, args.overrides, args.trust_code
        )
        for row in result["rows"]:
            print(
                f"{row['variant']:<18} acc {row['accuracy']:.4f}  {row['compression_x']:.1f}x smaller  "
                f"{row['throughput_x']:.2f}x throughput  ({row['stored_bytes']} bytes)"
            )
        return 0
    if args.command == "bench":
        result = pipeline.bench_checkpoint(
            args.checkpoint, args.onnx, args.overrides, args.trust_code
        )
        if args.out:
            atomic_write_json(args.out, result)
        for row in result["rows"]:
            print(
                f"{row['variant']:<28} acc {row['accuracy']:.4f}  p50 {row['latency_p50_ms']:.3f} ms  "
                f"p99 {row['latency_p99_ms']:.3f} ms  {row['throughput_x']:.2f}x throughput"
            )
        return 0
    if args.command == "report":
        from dlforge.report import write_report

        print(f"report: {write_report(args.run_dir)}")
        return 0
    if args.command == "models":
        from dlforge.models import list_models

        print("\n".join(list_models()))
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
