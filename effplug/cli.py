"""The ``effplug`` command: ``demo`` and ``env``."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from effplug import demo

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
    return parser


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
