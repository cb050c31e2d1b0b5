"""``cnnbench models list`` and ``cnnbench models show NAME``: the zoo, its costs and layers."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="list the model zoo or show one model's layers",
                                   description="The registered architectures: parameters, MFLOPs per image, "
                                               "native input size and where each comes from.")
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    sub.required = True

    listing = sub.add_parser("list", help="every model with params and MFLOPs at an input size",
                             description="One row per registered model. MFLOPs are forward FLOPs per image "
                                         "(torch.utils.flop_counter, a multiply-add counts 2) at --input-size "
                                         "(default: each model's native size).")
    _shape_arguments(listing)
    listing.add_argument("--family", help="only this family (e.g. resnet, vgg, deepl18)")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    listing.add_argument("--no-cache", action="store_true", help="recount instead of reading $CNNBENCH_HOME/models/")
    listing.set_defaults(func=run_list)

    show = sub.add_parser("show", help="one model: source, options, layer table",
                          description="Where the model comes from, its options, its L2 layers, and a table of "
                                      "its layers with output shapes and parameters at the input size.")
    show.add_argument("name", help="a registered model name (see `cnnbench models list`)")
    _shape_arguments(show)
    show.add_argument("--depth", type=int, default=2, help="module nesting depth of the layer table (default 2)")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(func=run_show)


def _shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-size", type=int, metavar="PX", help="square input size (default: the model's native)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="classes (default: the model's native)")
    parser.add_argument("--in-channels", type=int, metavar="C", help="input channels (default: the model's native)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option, e.g. stem=small (repeatable; values parsed as YAML)")


def _parse_options(items: list[str]) -> dict:
    from cnnbench.models.registry import parse_options

    return parse_options(items, "--option")


def _format_count(value) -> str:
    return "-" if value is None else f"{value:,}"


def run_list(args: argparse.Namespace) -> int:
    from cnnbench.errors import CnnbenchError
    from cnnbench.models import describe_models, list_models

    names = list_models(args.family)
    if not names:
        raise CnnbenchError(f"--family {args.family!r}: no such family")
    rows = describe_models(args.input_size, args.num_classes, args.in_channels, names=names,
                           use_cache=not args.no_cache, **_parse_options(args.option))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = f"{'name':<17} {'params':>12} {'MFLOPs':>10} {'input':>5} {'native':>6} {'min':>4}  source"
    print(header)
    print("-" * len(header))
    for row in rows:
        mflops = "-" if row["mflops"] is None else f"{row['mflops']:,.1f}"
        print(f"{row['name']:<17} {_format_count(row['params']):>12} {mflops:>10} {row['input_size']:>5} "
              f"{row['native_input_size']:>6} {row['min_input_size']:>4}  {row['source']}")
    refused = [row for row in rows if row["note"]]
    for row in refused:
        print(f"  {row['name']}: {row['note']}")
    print(f"{len(rows)} models; MFLOPs = forward FLOPs per image (multiply-add = 2)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cnnbench.models import build_on_meta, count_flops, count_parameters, get_model_info, layer_summary

    info = get_model_info(args.name)
    options = _parse_options(args.option)
    model = build_on_meta(args.name, input_size=args.input_size, num_classes=args.num_classes,
                          in_channels=args.in_channels, **options)
    cfg = model.cnnbench_cfg
    layers = layer_summary(model, depth=args.depth)
    summary = dict(name=info.name, family=info.family, source=info.source, description=info.description,
                   input_size=cfg["input_size"], native_input_size=info.input_size,
                   min_input_size=info.min_input_size, in_channels=cfg["in_channels"],
                   num_classes=cfg["num_classes"], options=options, option_help=info.options,
                   pretrained_weights=info.torchvision_name and f"torchvision {info.torchvision_name} IMAGENET1K_V1",
                   l2_layers=model.l2_layers, aux_weights=cfg.get("aux_weights", []),
                   params=count_parameters(model), mflops=round(count_flops(model) / 1e6, 2), layers=layers)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{info.name} ({info.family}): {info.description}")
    print(f"  source:      {info.source}")
    print(f"  input:       {cfg['input_size']} px x {cfg['in_channels']} channels (native {info.input_size}, "
          f"smallest {info.min_input_size} with default options), {cfg['num_classes']} classes")
    print(f"  params:      {summary['params']:,}    MFLOPs/image: {summary['mflops']:,.1f}")
    print(f"  pretrained:  {summary['pretrained_weights'] or 'no ImageNet weights'}")
    if model.l2_layers:
        print(f"  L2 layers:   {', '.join(model.l2_layers)}")
    if summary["aux_weights"]:
        print(f"  aux heads:   loss weights {summary['aux_weights']} (train mode returns (logits, aux...))")
    for key, text in info.options.items():
        print(f"  option {key}: {text}" + (f"  [set: {options[key]!r}]" if key in options else ""))
    print()
    print(f"  {'layer':<28} {'type':<18} {'output':<18} {'params':>12}")
    for row in layers:
        shape = "x".join(map(str, row["output"]))
        print(f"  {row['name']:<28} {row['type']:<18} {shape:<18} {row['params']:>12,}")
    return 0
