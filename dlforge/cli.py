"""The ``dlforge`` command: ``run`` (every stage a recipe enables), ``train``, ``cv``,
``evaluate``, ``quantize``, ``compress``, ``bench``, ``serve``, ``report``, ``models``.

Each command ends with a short summary on stdout (each stage's own ``summary``) and the paths it
wrote; logs go to stderr. Only the error base class is imported at the top, so ``--help`` does
not load torch. Under ``torchrun`` (``torchrun --nproc-per-node N -m dlforge train RECIPE``)
training runs data-parallel.

Every failure ends in one line on stderr naming what went wrong, never a traceback unless
``--debug`` asks for it: exit 2 for bad input (recipe, data, checkpoint, file), exit 1 for a stage
that failed after the run started (its error is recorded in ``metrics.json`` and the report) or
for an unexpected error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

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
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or auto (default: the recipe's)"
    )


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

    p = sub.add_parser("run", help="the whole job: data, train, evaluate, ..., report")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("train", help="data and training only; writes checkpoints")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = sub.add_parser("cv", help="k-fold cross-validation of a recipe (a fresh model per fold)")
    _recipe_args(p)
    p.add_argument("--folds", type=int, default=None, help="number of folds (default: 5)")
    p.add_argument(
        "--kind", choices=["stratified", "group", "repeated"], default=None, help="fold kind"
    )

    p = sub.add_parser("evaluate", help="evaluate a checkpoint, rebuilt from its own metadata")
    _checkpoint_arg(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-path", default=None, help="read the same kind of data from here")
    p.add_argument("--out", default=None, help="write the metrics JSON here")

    p = sub.add_parser(
        "attack", help="robustness of a checkpoint: attacks over ε, corruptions, sanity checks"
    )
    _checkpoint_arg(p)
    p.add_argument(
        "--attacks", default=None, help="comma-separated: fgsm,pgd,pgd_l2,cw,deepfool,square"
    )
    p.add_argument("--eps", default=None, help="comma-separated L∞ budgets in input units")
    p.add_argument("--samples", type=int, default=None, help="test samples attacked (0: all)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    _set_option(p, "robust.steps=40")

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
    p.add_argument(
        "--backends", default=None, help="engines to compare, e.g. ort,openvino (default: ort)"
    )
    p.add_argument(
        "--precisions", default=None, help="e.g. fp32,int8,bf16 (bf16: OpenVINO; default fp32,int8)"
    )
    _set_option(p, "harness settings, e.g. --set bench.threads=1")
    p.add_argument("--out", default=None, help="write the rows as JSON here")

    p = sub.add_parser(
        "serve", help="an HTTP server (Open Inference Protocol + /v1) for a run's exported model"
    )
    p.add_argument("target", help="a run folder (its deploy/), or an ONNX file")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0: any free)")
    p.add_argument("--workers", type=int, default=None, help="server processes on the one port")
    p.add_argument("--backend", default=None, choices=["ort", "openvino"], help="engine")
    p.add_argument(
        "--precision", default=None, help="int8 or fp32 (openvino also bf16, auto); default int8"
    )
    p.add_argument("--name", default=None, help="the model's name in /v2/models/NAME")
    p.add_argument(
        "--preprocessing",
        default=None,
        help="an ONNX file's preprocessing.json (default: the one beside it)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (costs time)")
    _set_option(p, "serve settings, e.g. --set serve.max_wait_ms=2 (see the recipe's serve:)")

    p = sub.add_parser("report", help="re-render a run folder's report.html from metrics.json")
    p.add_argument("run_dir")

    sub.add_parser("models", help="the registered models: what each is, its arguments and size")
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


def _section(title: str, lines: list[str]) -> None:
    """A titled block of summary lines on stdout (the results; logs go to stderr)."""
    if lines:
        print(f"\n{title}")
        for line in lines:
            print(f"  {line}")


def _summaries(metrics: dict[str, Any]) -> None:
    """Each stage's summary, in the order of the run, for the stages that ran."""
    from dlforge.stages import STAGES

    for stage in STAGES:
        part = metrics.get(stage.name)
        if isinstance(part, dict) and "error" not in part:
            _section(stage.title, stage.summary(part))


def _wrote(paths: list[Any]) -> None:
    _section("Wrote", [str(p) for p in paths if p])


def _recipe(args: argparse.Namespace) -> Any:
    from dlforge.recipe import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    return load_recipe(args.recipe, overrides)


def _dispatch(args: argparse.Namespace) -> int:
    # Imported here so `dlforge --help` answers without loading torch.
    from dlforge.train.checkpoint import atomic_write_json

    if args.command == "models":
        return _models()
    if args.command == "report":
        from dlforge.report import write_report

        _wrote([write_report(args.run_dir)])
        return 0
    if args.command == "serve":
        return _serve(args)
    from dlforge import pipeline

    if args.command == "run":
        recipe = _recipe(args)
        outcome = pipeline.run(recipe, resume=args.resume)
        if not outcome.main:  # another process of a torchrun job: the first one reports
            return 0
        _section("Training", _train_lines(outcome.metrics["train"]))
        _summaries(outcome.metrics)
        timings = outcome.metrics["timings"]
        _section("Time", [f"{timings['total']:.1f} s in all"])
        _wrote([outcome.run_dir / "metrics.json",
                outcome.report_path if recipe.report.enabled else None,
                outcome.metrics["model"]["checkpoint"]])  # fmt: skip
        return 0
    if args.command == "train":
        recipe = _recipe(args)
        result = pipeline.train(recipe, resume=args.resume)
        if result.get("main") is False:
            return 0
        _section("Training", _train_lines(result["train"]))
        _wrote([result["model"]["checkpoint"]])
        return 0
    if args.command == "cv":
        recipe = _recipe(args)
        if args.folds is not None:
            recipe = _with(recipe, f"crossval.folds={args.folds}")
        if args.kind is not None:
            recipe = _with(recipe, f"crossval.kind={args.kind}")
        result = pipeline.cross_validate_recipe(recipe)
        from dlforge.stages import get_stage

        _section("Cross-validation", get_stage("crossval").summary(result))
        run_dir = f"{recipe.output_dir}/{recipe.name}"
        _wrote([f"{run_dir}/metrics.json", f"{run_dir}/report.html"])
        return 1 if result["failed"] else 0
    if args.command == "evaluate":
        result = pipeline.evaluate_checkpoint(
            args.checkpoint, args.split, args.data_path, args.trust_code
        )
        if args.out:
            atomic_write_json(args.out, result)
        from dlforge.stages import get_stage

        _section("Metrics", get_stage("evaluate").summary(result))
        _wrote([args.out])
        return 0
    if args.command == "attack":
        overrides = [*args.overrides, *_list_overrides(args, "robust", ("attacks", "eps"))]
        if args.samples is not None:
            overrides.append(f"robust.samples={args.samples}")
        result = pipeline.attack_checkpoint(args.checkpoint, overrides, args.out, args.trust_code)
        from dlforge.stages import get_stage

        _section("Robustness", get_stage("robust").summary(result))
        _wrote([args.out or pipeline.robust_path(args.checkpoint)])
        return 0
    if args.command == "quantize":
        result = pipeline.quantize_checkpoint(
            args.checkpoint, args.overrides, args.out, args.bench, args.trust_code
        )
        _summaries(result)
        return 0
    if args.command == "compress":
        result = pipeline.compress_checkpoint(
            args.checkpoint, args.recipe, args.overrides, args.trust_code
        )
        _summaries({"compress": result})
        out = pipeline.compress_dir(args.checkpoint)
        _wrote([out / "compress.json", *sorted(out.glob("*.onnx")), *sorted(out.glob("*.dc"))])
        return 0
    if args.command == "bench":
        overrides = [*args.overrides, *_list_overrides(args, "bench", ("backends", "precisions"))]
        result = pipeline.bench_checkpoint(args.checkpoint, args.onnx, overrides, args.trust_code)
        if args.out:
            atomic_write_json(args.out, result)
        _summaries({"bench": result})
        _wrote([args.out])
        return 0
    raise AssertionError(args.command)


def _list_overrides(args: argparse.Namespace, section: str, flags: tuple[str, ...]) -> list[str]:
    """``--flag a,b`` options as ``section.flag=[a,b]`` recipe overrides (unset flags: none)."""
    out = []
    for flag in flags:
        value = getattr(args, flag)
        if value is not None:
            items = [v.strip() for v in value.split(",") if v.strip()]
            out.append(f"{section}.{flag}=[{','.join(items)}]")
    return out


def _serve(args: argparse.Namespace) -> int:
    """Serve a run folder (its recipe's serve: section are the defaults) or an ONNX file."""
    from pathlib import Path

    from dlforge.config import ConfigError, to_dict
    from dlforge.deploy.config import ServeConfig
    from dlforge.deploy.serve import ServeSpec, resolve_target, run_server
    from dlforge.recipe import recipe_from_dict

    recipe_file = Path(args.target) / "recipe.yaml"
    overrides = list(args.overrides)
    for item in overrides:
        if not item.startswith("serve."):
            raise ConfigError(f"dlforge serve takes serve.* settings only; got --set {item}")
    for flag in ("host", "port", "workers", "backend", "precision"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"serve.{flag}={value}")
    section: dict[str, Any] = {}
    if recipe_file.is_file():  # only its serve: section: an older run's other keys may be gone
        import yaml

        loaded = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
        if isinstance(loaded, dict) and isinstance(loaded.get("serve"), dict):
            section = loaded["serve"]
    cfg: ServeConfig = recipe_from_dict({"serve": section}, overrides).serve
    SERVE_KEYS = set(ServeConfig.__dataclass_fields__)
    if Path(args.target).is_file():  # a file says itself whether it is int8
        from dlforge.deploy.bench import is_quantized
        from dlforge.deploy.runtime import check_onnx_file

        quantized = is_quantized(check_onnx_file(args.target))
        if quantized != (cfg.precision == "int8") and args.precision is not None:
            raise ConfigError(
                f"{args.target} is {'an int8 (QDQ)' if quantized else 'a float'} file; "
                f"--precision {cfg.precision} does not fit it",
                "serve.precision",
            )
        if quantized != (cfg.precision == "int8"):
            cfg.precision = "int8" if quantized else "fp32"
    onnx_path, preprocessing, name = resolve_target(args.target, cfg.precision, args.preprocessing)
    if cfg.port == 0:  # the banner and the clients need the real port
        from dlforge.deploy.loadgen import free_port

        cfg.port = free_port()
    check_port_free(cfg.host, cfg.port)
    spec = ServeSpec(
        str(onnx_path),
        preprocessing,
        {k: v for k, v in to_dict(cfg).items() if k in SERVE_KEYS},
        args.name or name,
    )
    print(
        f"serving {onnx_path} as '{spec.model_name}' ({cfg.backend}, {cfg.precision}) on "
        f"http://{cfg.host}:{cfg.port} with {cfg.workers} worker(s); Ctrl-C stops it",
        file=sys.stderr,
    )
    run_server(spec, access_log=args.access_log)
    return 0


def check_port_free(host: str, port: int) -> None:
    """Refuse, before loading the model, a port another process listens on."""
    import socket

    from dlforge.config import ConfigError

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror})", "serve.port"
            ) from None


def _with(recipe: Any, override: str) -> Any:
    from dlforge.recipe import recipe_from_dict

    return recipe_from_dict(recipe.to_dict(), [override])


def _train_lines(train: dict[str, Any]) -> list[str]:
    epochs = train.get("epochs", [])
    if not epochs:
        return []
    last, best = epochs[-1], train.get("best", {})
    settings = train.get("settings", {})
    line = f"{len(epochs)} epochs on {settings.get('device', '?')} ({settings.get('precision')})"
    out = [
        line,
        f"last epoch: train loss {last['train_loss']:.4g}, "
        f"train accuracy {last['train_accuracy']:.4f}"
        + (f", val accuracy {last['val_accuracy']:.4f}" if "val_accuracy" in last else ""),
    ]
    if best:
        metric = next((k for k in best if k not in ("epoch", "step")), None)
        if metric:
            out.append(f"best weights from epoch {best['epoch']} ({metric} {best[metric]:.4g})")
    return out  # fmt: skip


def _models() -> int:
    """Every registered model: what it is, its main arguments, its size on a typical input."""
    from dlforge.models.registry import describe_models

    rows = describe_models()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['summary']}")
        print(f"{'':<{width}}  arguments: {r['arguments']}; {r['parameters']}")
    print("\nor your own: model.name: package.module:function (see README)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
