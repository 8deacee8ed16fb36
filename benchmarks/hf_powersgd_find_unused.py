"""How often PowerSGD under the HF Trainer (2 gloo processes) finishes, with and without find_unused_parameters.

    python benchmarks/hf_powersgd_find_unused.py --runs 10              # both settings
    python benchmarks/hf_powersgd_find_unused.py --find-unused true     # HF's default for a PreTrainedModel

Each run trains a tiny GPT-2 for 8 steps through ``EffTrainer(comm={"compressor": "powersgd", ...})`` with
``TrainingArguments(ddp_find_unused_parameters=True|False)``; a run counts as finished when both ranks exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rank_main(out: str, find_unused: bool) -> None:
    import torch
    import transformers

    from effplug.hf import EffTrainer
    from effplug.models import tiny_gpt2

    ids = torch.randint(0, 40, (64, 17), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": r[:-1], "labels": r[1:]} for r in ids]
    torch.manual_seed(0)
    args = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=4, learning_rate=3e-3, report_to=[], use_cpu=True,
        ddp_backend="gloo", disable_tqdm=True, save_strategy="no", max_steps=8, logging_steps=100,
        ddp_find_unused_parameters=find_unused)
    EffTrainer(model=tiny_gpt2(vocab_size=40, n_positions=16), args=args, train_dataset=rows,
               comm={"compressor": "powersgd", "rank": 1, "start_iter": 2}).train()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--find-unused", choices=["both", "true", "false"], default="both")
    parser.add_argument("--json", default="bench_out/hf_powersgd_find_unused.json")
    args = parser.parse_args(argv)
    from tasks import write_report

    from effplug.launch import launch_ranks

    rows = []
    for find_unused in {"both": (True, False), "true": (True,), "false": (False,)}[args.find_unused]:
        finished, errors = 0, []
        for _ in range(args.runs):
            try:
                launch_ranks([__file__], world=2, timeout=300, EFFPLUG_PSGD_RANK="1",
                             EFFPLUG_PSGD_FIND_UNUSED=str(int(find_unused)))
                finished += 1
            except RuntimeError as error:
                errors.append(next((line.strip() for line in str(error).splitlines() if "Error" in line or
                                    "what()" in line), str(error).splitlines()[0])[:200])
        rows.append({"find_unused_parameters": find_unused, "runs": args.runs, "finished": finished,
                     "errors": errors})
    print("| find_unused_parameters | runs | finished | first error |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['find_unused_parameters']} | {r['runs']} | {r['finished']} | {(r['errors'] or ['-'])[0]} |")
    write_report(args.json, rows, steps=8, device="cpu (gloo, 2 processes)")


if __name__ == "__main__":
    if os.environ.get("EFFPLUG_PSGD_RANK"):
        rank_main(str(Path("bench_out") / "hf_powersgd_run"), os.environ["EFFPLUG_PSGD_FIND_UNUSED"] == "1")
    else:
        main()
