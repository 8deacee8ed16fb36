"""What a GACT calibration step costs against a plain step, with the round in one step (``probes_per_step=None``,
GACT's schedule) and spread over steps (``probes_per_step=1``, the default).

    python benchmarks/calibration_cost.py                       # char GPT-2 and a Qwen2 with hidden size 256
    python benchmarks/calibration_cost.py --tasks char-gpt2 --plain-steps 10

Each run trains with GACT at 4 bits on average and ``recalibrate_every`` larger than the run, so only the first
round calibrates. "Plain" is the median compressed step outside calibration; "uncompressed" is the median step
of the same task without compression, in the same process. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tasks  # noqa: E402

from effplug.compress import ActivationCompressor  # noqa: E402
from effplug.profile import write_report  # noqa: E402

SCHEDULES = {"one step (None)": None, "spread (1 per step)": 1}


def qwen2_task(seed: int, device):
    """A Qwen2 causal LM with hidden size 256 on ``stdlib_text`` characters (vocabulary 256)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(config).to(device)
    _, _, char_batches, _, _, _ = tasks.char_lm_task(seed, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss_fn(x, y):
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return model, opt, lambda steps: char_batches(steps, batch=8), loss_fn


def char_gpt2_task(seed: int, device):
    model, opt, batches, loss_fn, _, _ = tasks.char_lm_task(seed, device)
    return model, opt, batches, loss_fn


TASKS = {"char-gpt2": char_gpt2_task, "qwen2-h256": qwen2_task}


def _train(task: str, seed: int, plain_steps: int, probes, device) -> list[tuple[float, bool]]:
    """(seconds, calibrating) per step, until the first round is done and ``plain_steps`` more ran;
    ``probes`` False: no compression, ``plain_steps`` steps."""
    model, opt, batches, loss_fn = TASKS[task](seed, device)
    stream = iter(batches(10**5))
    for _ in range(2):  # warm-up, uncompressed, so that no calibration step pays first-call costs
        x, y = next(stream)
        loss_fn(x, y).backward()
    engine = None
    if probes is not False:
        engine = ActivationCompressor(model, method="gact", bits=4, recalibrate_every=10**9, probes_per_step=probes,
                                      seed=seed).attach()
    out, plain = [], 0
    for x, y in stream:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        calibrating = engine is not None and engine.calibration_pending
        if engine is not None:
            engine.calibrate(loss)
        loss.backward()
        opt.step()
        out.append((time.perf_counter() - start, calibrating))
        plain += not calibrating
        if plain >= plain_steps:
            break
    if engine is not None:
        engine.detach()
    return out


def measure(task: str, seed: int, plain_steps: int, device) -> list[dict]:
    uncompressed = statistics.median(t for t, _ in _train(task, seed, plain_steps, False, device))
    rows = []
    for name, probes in SCHEDULES.items():
        steps = _train(task, seed, plain_steps + 1, probes, device)
        calib = [t for t, c in steps if c]
        plain_ms = statistics.median(t for t, c in steps[1:] if not c) * 1e3  # the first is a warm-up
        rows.append({"task": task, "schedule": name, "calibration_steps": len(calib),
                     "calibration_step_ms_median": statistics.median(calib) * 1e3,
                     "calibration_step_ms_max": max(calib) * 1e3, "round_s": sum(calib),
                     "plain_step_ms": plain_ms, "uncompressed_step_ms": uncompressed * 1e3,
                     "max_vs_plain": max(calib) * 1e3 / plain_ms, "max_vs_uncompressed": max(calib) / uncompressed})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| task | schedule | calibration steps | calibration step ms (median / max) | round s | plain step ms "
             "| uncompressed ms | max calibration step vs plain | vs uncompressed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['schedule']} | {r['calibration_steps']} | "
                     f"{r['calibration_step_ms_median']:.0f} / {r['calibration_step_ms_max']:.0f} | {r['round_s']:.1f} | "
                     f"{r['plain_step_ms']:.0f} | {r['uncompressed_step_ms']:.0f} | {r['max_vs_plain']:.2f}x | "
                     f"{r['max_vs_uncompressed']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--plain-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench_out/calibration_cost.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [r for task in args.tasks for r in measure(task, args.seed, args.plain_steps, device)]
    print(format_table(rows))
    write_report(args.json, rows, argv=["benchmarks/calibration_cost.py", *(argv or sys.argv[1:])])


if __name__ == "__main__":
    main()
