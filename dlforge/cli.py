"""The ``dlforge`` command: ``run``, ``train``, ``evaluate``, ``report``, ``models``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dlforge.config import ConfigError
from dlforge.data import DataError
from dlforge.train import CheckpointError, NonFiniteLossError, atomic_write_json

EXPECTED_ERRORS = (ConfigError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError)


def _set_option(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=example
    )


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe", nargs="?", default=None, help="YAML recipe (default: built-in defaults)"
    )
    _set_option(p, "override a recipe field, e.g. --set train.optimizer.lr=0.01 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlforge", description="Train, evaluate, compress and deploy PyTorch models."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole job: data, train, evaluate, report")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("train", help="data and training only; writes checkpoints")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("evaluate", help="evaluate a checkpoint, rebuilt from its own metadata")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by dlforge")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-path", default=None, help="read the same kind of data from here")
    p.add_argument("--out", default=None, help="write the metrics JSON here")

    p = sub.add_parser("quantize", help="int8 PTQ of a checkpoint, exported to ONNX (QDQ)")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by dlforge")
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
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by dlforge")
    p.add_argument("--recipe", default=None, help="a recipe whose compress: section to run")
    _set_option(p, "compress settings, e.g. --set compress.prune.sparsity=0.8")

    p = sub.add_parser("bench", help="latency, throughput, memory, size and accuracy of variants")
    p.add_argument("checkpoint", help="the fp32 checkpoint (its eager model is the baseline)")
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
    except EXPECTED_ERRORS as exc:
        print(f"dlforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    # Imported here so `dlforge --help` answers without loading torch.
    from dlforge import pipeline
    from dlforge.recipe import load_recipe

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
        run_dir = Path(recipe.output_dir) / recipe.name
        _, _, result, timings = pipeline.train_stage(recipe, run_dir, resume=args.resume)
        result["timings"] = timings
        atomic_write_json(run_dir / "metrics.json", result)
        print(f"checkpoint: {result['model']['checkpoint']}")
        return 0
    if args.command == "evaluate":
        result = pipeline.evaluate_checkpoint(args.checkpoint, args.split, args.data_path)
        if args.out:
            atomic_write_json(args.out, result)
        print(json.dumps(result["summary"], indent=2))
        return 0
    if args.command == "quantize":
        result = pipeline.quantize_checkpoint(args.checkpoint, args.overrides, args.out, args.bench)
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
        result = pipeline.compress_checkpoint(args.checkpoint, args.recipe, args.overrides)
        for row in result["rows"]:
            print(
                f"{row['variant']:<18} acc {row['accuracy']:.4f}  {row['compression_x']:.1f}x smaller  "
                f"{row['throughput_x']:.2f}x throughput  ({row['stored_bytes']} bytes)"
            )
        return 0
    if args.command == "bench":
        result = pipeline.bench_checkpoint(args.checkpoint, args.onnx, args.overrides)
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
