"""The ``effplug`` command: ``demo``, ``env``, ``plan``, ``kernels --compile sm_90``, ``quant search``, and ``fit``/``validate``/``test``/``predict``
(LightningCLI with effplug's strategy names registered)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from effplug import demo

    for kind, wanted, known in (("--task", args.task, demo.DEMO_TASKS), ("--config", args.config, demo.DEMO_CONFIGS)):
        unknown = sorted(set(wanted or ()) - set(known))
        if unknown:
            raise UsageError(f"unknown {kind} {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, known))}")
    rows = demo.run_demo(quick=args.quick, configs=args.config, tasks=args.task, progress=not args.no_progress)
    print()
    print(demo.format_table(rows))
    if args.json:
        demo.write_json(rows, args.json, ["effplug", *sys.argv[1:]])
        print(f"\nwrote {args.json}")
    return 0


def _env(args) -> int:
    from effplug.envinfo import environment, format_environment

    print(format_environment(environment()))
    return 0


def _topology_plan(args) -> int:
    import math

    from effplug.parallel.planner import Link, Measured, Workload, format_layouts, parse_topology, rank_layouts
    from effplug.parallel.planner.report import format_costs

    for flag, value in (("--link", args.link), ("--latency-us", args.latency_us)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} {value}: use a positive number")
    try:
        work = Workload(args.params, global_batch=args.global_batch, seq_len=args.seq_len,
                        micro_batch=args.micro_batch, hidden=args.hidden, layers=args.layers,
                        peak_tflops=args.tflops, mfu=args.mfu, gpu_mem_gb=args.gpu_mem, headroom=args.headroom)
        if args.gpus < 1:
            raise ValueError(f"gpus={args.gpus}: use at least 1")
        if args.topology == "local":
            from effplug.parallel.planner.measure import measure_link

            world = min(max(args.gpus, 2), 4)
            link, _ = measure_link(world)
            topology = Measured(args.gpus, link, f"gloo loopback (measured with {world} processes here)")
        else:
            topology = parse_topology(args.topology, args.gpus, Link.gbit(args.link, args.latency_us))
        rows = rank_layouts(work, topology)
    except ValueError as error:
        raise UsageError(str(error).replace("params=", "--params ").replace("gpu_mem_gb=", "--gpu-mem ")
                         .replace("global_batch=", "--global-batch ").replace("gpus=", "--gpus ")) from None
    print(format_layouts(rows, work, topology, top=args.top))
    print(f"\nthe network for {args.gpus} accelerators, per topology (switches of {64} ports):\n")
    print(format_costs(args.gpus, topology.link))
    if args.json:
        from dataclasses import asdict

        from effplug.profile import write_report

        write_report(args.json, [{**asdict(r), "label": r.label, "step_s": r.step_s} for r in rows],
                     argv=["effplug", *sys.argv[1:]], topology=topology.name, workload=asdict(work))
    return 0


def _plan(args) -> int:
    from effplug.parallel.zero import format_plan, plan

    if args.topology:
        return _topology_plan(args)

    try:
        rows = plan(args.params, args.gpus, args.gpu_mem, param_bytes=args.param_bytes, grad_bytes=args.grad_bytes,
                    optimizer_bytes=args.optimizer_bytes, headroom=args.headroom)
    except ValueError as error:
        raise UsageError(str(error).replace("num_params=", "--params ").replace("gpu_mem_gb=", "--gpu-mem ")
                         .replace("headroom=", "--headroom ").replace("gpus=", "--gpus ")) from None
    print(format_plan(rows, args.params, args.gpus, args.gpu_mem))
    return 0


def _kernels(args) -> int:
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UsageError("--compile builds GPU binaries, which the Triton interpreter cannot; unset TRITON_INTERPRET")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise UsageError("the compile tier needs triton: pip install 'effplug[triton]'") from None
    from effplug.kernels import compile_tier

    capabilities = []
    for target in args.compile:
        if not (target.startswith("sm_") and target[3:].isdigit()):
            raise UsageError(f"--compile {target!r}: give NVIDIA targets such as sm_80 sm_90")
        capabilities.append(int(target[3:]))

    def progress(done, total, variant):
        if not args.no_progress:
            print(f"\r[{done}/{total}] {variant.kernel} {variant.label}".ljust(78), end="", file=sys.stderr,
                  flush=True)

    results = compile_tier.compile_all(tuple(capabilities), full=args.full, progress=progress)
    print(file=sys.stderr)
    print(compile_tier.format_table(results))
    if args.json:
        from dataclasses import asdict

        from effplug.profile import write_report

        rows = [{**asdict(r), "variant": {**asdict(r.variant), "constexprs": {k: str(v) for k, v in
                                                                              r.variant.constexprs.items()}}}
                for r in results]
        write_report(args.json, rows,
                     argv=["effplug", *sys.argv[1:]], register_budget=compile_tier.REGISTER_BUDGET)
    failed = [r for r in results if r.error]
    return 1 if failed else 0


def _search_inputs(args):
    """(model, calibration loss closures) from ``--model pkg.mod:fn`` or an embedded ``--task``."""
    import importlib

    if args.model:
        module_name, _, attr = args.model.partition(":")
        if not module_name or not attr:
            raise UsageError(f"--model {args.model!r}: give module:callable, e.g. mypkg.models:build_for_search")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise UsageError(f"--model {args.model!r}: cannot load it ({error})") from None
        built = factory()
        if not (isinstance(built, tuple) and len(built) == 2 and callable(getattr(built[0], "named_modules", None))
                and built[1] and all(callable(f) for f in built[1])):
            raise UsageError(f"--model {args.model!r} must return (model, losses): an nn.Module and a non-empty list "
                             "of zero-argument closures, each returning the loss on one calibration batch")
        return built
    import torch

    from effplug import demo

    if args.task not in demo.DEMO_TASKS:
        raise UsageError(f"unknown --task {args.task!r}; choose from {', '.join(map(repr, demo.DEMO_TASKS))}, or "
                         "pass your own with --model module:callable")
    task = demo.DEMO_TASKS[args.task]
    torch.manual_seed(args.seed)
    module, loader, *_ = task.build(True)
    if args.train_steps:  # HAWQ reads the curvature of a trained model; a random init gives noisy traces
        optimizer = module.optimizer_class(module.parameters(), lr=module.lr)
        module.train()
        step = 0
        while step < args.train_steps:
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                module.compute_loss(batch).backward()
                optimizer.step()
                step += 1
                _progress(args, f"train {step}/{args.train_steps}")
                if step == args.train_steps:
                    break
    batches = [b for b, _ in zip(loader, range(args.calibration_batches), strict=False)]
    return module, [lambda b=b: module.compute_loss(b) for b in batches]


def _progress(args, text: str) -> None:
    if not args.no_progress:
        print(f"\r{text}".ljust(60), end="", file=sys.stderr, flush=True)


def _quant_search(args) -> int:
    from effplug.quant import QATConfig
    from effplug.quant.bit_search import search_bits
    from effplug.quant.convert import searched_config

    if (args.budget_bits is None) == (args.budget_bytes is None):
        raise UsageError("give one budget: --budget-bits 3.0 (average weight bits) or --budget-bytes N")
    if args.calibration_batches < 1:
        raise UsageError(f"--calibration-batches {args.calibration_batches}: use at least 1")
    try:
        config = QATConfig(bits="auto", budget_bits=args.budget_bits, budget_bytes=args.budget_bytes,
                           search_bits=tuple(args.bits), search_method=args.method, search_seed=args.seed,
                           weight_estimator=args.weight_estimator, act_bits=args.act_bits,
                           first_last_bits=None if args.search_first_last else 8)
    except ValueError as error:
        raise UsageError(str(error).replace("budget_bits=", "--budget-bits ").replace("budget_bytes=", "--budget-bytes ")
                         .replace("search_bits", "--bits")) from None
    model, losses = _search_inputs(args)
    try:
        result = search_bits(model, config, losses, progress=lambda i, n: _progress(
            args, f"probe {i} (at most {n})" if args.method == "hessian" else f"batch {i}/{n}"))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not args.no_progress:
        print(file=sys.stderr)
    print(result.table())
    explicit = searched_config(model, config, result)
    print(f"\nto train with these bits: QATConfig(weight_estimator={config.weight_estimator!r}, "
          f"act_bits={config.act_bits!r}, first_last_bits={config.first_last_bits!r}, bits={explicit.bits!r})")
    if args.json:
        from dataclasses import asdict

        from effplug.profile import write_report

        rows = [{"layer": n, "bits": b, **({"sensitivity": asdict(result.sensitivity[n]), "mse": result.mse[n]}
                                          if n in result.sensitivity else {"fixed": result.fixed[n]})}
                for n, b in result.bits.items()]
        write_report(args.json, rows, argv=["effplug", *sys.argv[1:]], average_bits=result.average_bits,
                     budget_bits=result.budget_bits)
    return 0


PROFILE_MODELS = ("bert-tiny", "gpt2-tiny", "llama-tiny")


def _profile(args) -> int:
    import torch

    from effplug import models
    from effplug.movement import data_movement

    if args.model not in PROFILE_MODELS:
        raise UsageError(f"--model {args.model!r}: choose from {', '.join(PROFILE_MODELS)}")
    if args.batch < 1 or args.seq < 2:
        raise UsageError(f"--batch {args.batch} --seq {args.seq}: use a batch of at least 1 and 2 tokens")
    torch.manual_seed(0)
    build = {"bert-tiny": models.tiny_bert, "gpt2-tiny": models.tiny_gpt2, "llama-tiny": models.tiny_llama}
    model = build[args.model](attn_implementation=args.attention)
    if args.fused:
        from effplug.fused import apply_fused_kernels

        apply_fused_kernels(model)
    ids = torch.randint(1, 100, (args.batch, args.seq))
    labels = torch.zeros(args.batch, dtype=torch.long) if args.model == "bert-tiny" else ids

    def step():
        loss = model(input_ids=ids, labels=labels).loss
        if args.backward:
            loss.backward()

    report = data_movement(step, model)
    print(f"{args.model}{' with effplug fused kernels' if args.fused else ''}, batch {args.batch} x {args.seq} tokens, "
          f"{'forward + backward' if args.backward else 'forward'} (bytes each aten op reads and writes; "
          "docs/movement.md)\n")
    print(report.table(args.by, top=args.top))
    return 0


class UsageError(Exception):
    """A bad command line: printed as argparse prints usage errors, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effplug", description="Efficiency plugins for Lightning and HF training loops.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the embedded tasks with each configuration and print one table")
    demo.add_argument("--quick", action="store_true", help="a few steps per row (a smoke test, not a measurement)")
    demo.add_argument("--task", action="append", help="only this task (repeatable)")
    demo.add_argument("--config", action="append", help="only this configuration, plus the baseline (repeatable)")
    demo.add_argument("--json", help="also write the rows, environment and command line to this JSON file")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(func=_demo)
    env = sub.add_parser("env", help="print versions, devices, Triton usability and the kernel backend")
    env.set_defaults(func=_env)
    planner = sub.add_parser("plan", help="per-rank memory of DDP and ZeRO 1/2/3 for a model size, and which fits; "
                                          "with --topology, ranked DP x PP x ZeRO x compressor layouts")
    planner.add_argument("--params", type=float, required=True, help="parameter count, e.g. 7e9")
    planner.add_argument("--gpus", type=int, required=True, help="GPUs (data-parallel ranks without --topology)")
    planner.add_argument("--gpu-mem", type=float, default=80.0, help="GiB of memory per GPU (default 80)")
    planner.add_argument("--topology", help="fattree[:oversubscription], torus:8x8, hammingmesh:4x4[:2x2], or "
                                            "local (gloo measured here)")
    planner.add_argument("--link", type=float, default=100.0, help="Gbit/s per port (default 100)")
    planner.add_argument("--latency-us", type=float, default=2.0, help="latency per message, microseconds")
    planner.add_argument("--global-batch", type=int, default=512, help="sequences per step (default 512)")
    planner.add_argument("--seq-len", type=int, default=2048)
    planner.add_argument("--micro-batch", type=int, default=1, help="sequences per pipeline micro-batch")
    planner.add_argument("--hidden", type=int, help="hidden size (default: from --params, GPT-like shape)")
    planner.add_argument("--layers", type=int, help="layers (default: hidden / 128)")
    planner.add_argument("--tflops", type=float, default=989.0, help="peak TFLOP/s per GPU (default: H100 bf16)")
    planner.add_argument("--mfu", type=float, default=0.4, help="fraction of peak the model sustains")
    planner.add_argument("--top", type=int, default=10, help="layouts to print")
    planner.add_argument("--json", help="also write every ranked layout to this JSON file")
    planner.add_argument("--param-bytes", type=int, default=2, help="bytes per parameter (2: fp16/bf16, 4: fp32)")
    planner.add_argument("--grad-bytes", type=int, default=2, help="bytes per gradient value")
    planner.add_argument("--optimizer-bytes", type=int, default=12,
                         help="optimizer bytes per parameter (12: Adam's fp32 master, m and v)")
    planner.add_argument("--headroom", type=float, default=0.9,
                         help="fraction of GPU memory model states may use (the rest: activations, buffers)")
    planner.set_defaults(func=_plan)
    kernels = sub.add_parser("kernels", help="compile every Triton kernel variant for NVIDIA targets (no GPU "
                                             "needed): registers, spills, shared memory, instructions")
    kernels.add_argument("--compile", nargs="+", default=["sm_80", "sm_90"], metavar="SM",
                         help="targets, e.g. sm_80 sm_90 (default both)")
    kernels.add_argument("--full", action="store_true",
                         help="every dtype x bits x stochastic x scale combination, not the covering set")
    kernels.add_argument("--json", help="also write the table's rows to this JSON file")
    kernels.add_argument("--no-progress", action="store_true")
    kernels.set_defaults(func=_kernels)
    quant = sub.add_parser("quant", help="quantization tools").add_subparsers(dest="quant_command", required=True)
    search = quant.add_parser("search", help="per-layer weight bits under a budget (HAWQ trace x MSE, exact "
                                             "allocation): print the table and the QATConfig to train with")
    source = search.add_mutually_exclusive_group()
    source.add_argument("--model", help="module:callable returning (model, losses), losses being zero-argument "
                                        "closures that each return the loss on one calibration batch")
    source.add_argument("--task", default="char-gpt2", help="an embedded demo task (default char-gpt2), trained "
                                                            "--train-steps first")
    search.add_argument("--budget-bits", type=float, help="average weight bits over the quantized layers")
    search.add_argument("--budget-bytes", type=float, help="bytes of quantized weights")
    search.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4, 8], help="candidate widths")
    search.add_argument("--method", default="hessian", help="hessian (Hutchinson trace) or fisher (cheaper)")
    search.add_argument("--weight-estimator", default="octav", help="the weight grid whose MSE is counted")
    search.add_argument("--act-bits", type=int, default=8, help="activation bits of the config printed")
    search.add_argument("--search-first-last", action="store_true",
                        help="search the first and last layers too (default: kept at 8 bits, as HAWQ does)")
    search.add_argument("--calibration-batches", type=int, default=2)
    search.add_argument("--train-steps", type=int, default=100, help="--task only: float steps before the search")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--json", help="also write the per-layer rows to this JSON file")
    search.add_argument("--no-progress", action="store_true")
    search.set_defaults(func=_quant_search)
    profile = sub.add_parser("profile", help="bytes and FLOPs of every op of a tiny HF model (a data-movement "
                                             "report, per op kind, op or module)")
    profile.add_argument("--model", default="bert-tiny", help=f"one of {', '.join(PROFILE_MODELS)}")
    profile.add_argument("--batch", type=int, default=2)
    profile.add_argument("--seq", type=int, default=64)
    profile.add_argument("--backward", action="store_true", help="count the backward pass too")
    profile.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa",
                         help="HF attention implementation; --fused replaces eager attention's softmax")
    profile.add_argument("--fused", action="store_true",
                         help="patch the model with effplug.hf.apply_fused_kernels first (each fused op counts once)")
    profile.add_argument("--by", choices=["kind", "op", "module"], default="kind")
    profile.add_argument("--top", type=int, default=12)
    profile.set_defaults(func=_profile)
    for name in ("fit", "validate", "test", "predict"):  # listed for --help; main() hands these to LightningCLI
        sub.add_parser(name, help=f"LightningCLI {name} with effplug's strategy names registered "
                                  f"(effplug {name} --config run.yaml)", add_help=False)
    return parser


def main(argv: list | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("fit", "validate", "test", "predict"):
        from effplug.lightning_cli import run_lightning_cli

        run_lightning_cli(argv)  # LightningCLI parses (and exits on --help or errors) itself
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        command = " ".join(filter(None, (args.command, getattr(args, "quant_command", None))))
        print(f"effplug {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
