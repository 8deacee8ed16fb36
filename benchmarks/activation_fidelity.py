"""Gradient fidelity of compressed activations: one batch, compressed vs exact gradients, per parameter.

    python benchmarks/activation_fidelity.py
    python benchmarks/activation_fidelity.py --models digits-resnet tiny_gpt2-sdpa --methods actnn --bits 4

For each model (random init, fixed seed) and config, the gradient of one batch is computed with and without
compression (same dropout masks). Columns: the worst per-parameter cosine (parameters whose exact gradient
is zero in exact arithmetic, such as BERT's key bias, are skipped), the parameter it belongs to, the cosine
of the whole gradient vector, and the in-scope held-bytes ratio. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effplug import data, models  # noqa: E402
from effplug.compress import compressed_activations  # noqa: E402
from effplug.profile import write_report  # noqa: E402


def build(name: str):
    """(model, loss closure) for one batch of each model."""
    torch.manual_seed(0)
    if name == "digits-resnet":
        split = data.digits()
        x, y = split.train_x[:256], split.train_y[:256]
        model = models.DigitsResNet()
        return model, lambda: F.cross_entropy(model(x), y)
    arch, attn = name.split("-")
    model = getattr(models, arch)(attn_implementation=attn)
    ids = torch.randint(0, 128, (8, 64))
    labels = torch.randint(0, 2, (8,)) if arch == "tiny_bert" else ids
    return model, lambda: model(input_ids=ids, labels=labels).loss


def gradients(model, loss_fn, settings):
    model.zero_grad()
    torch.manual_seed(1)  # identical dropout masks in every run
    engine = None
    if settings is None:
        loss_fn().backward()
    else:
        with compressed_activations(model, seed=0, **settings) as engine:
            loss = loss_fn()
            engine.calibrate(loss)
            loss.backward()
        if engine.method.needs_calibration:  # the first forward calibrated; measure the next one
            model.zero_grad()
            torch.manual_seed(1)
            with engine:
                loss_fn().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, engine


def compare(got, ref) -> dict:
    top = max(float(g.norm()) for g in ref.values())
    cos = {
        n: float(F.cosine_similarity(got[n].flatten(), ref[n].flatten(), dim=0))
        for n in ref
        if ref[n].norm() > 1e-6 * top
    }
    worst = min(cos, key=cos.get)
    whole = float(F.cosine_similarity(torch.cat([got[n].flatten() for n in ref]), torch.cat([ref[n].flatten() for n in ref]), dim=0))
    return {"worst_cosine": cos[worst], "worst_parameter": worst, "whole_cosine": whole}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[
        "digits-resnet", "tiny_gpt2-eager", "tiny_gpt2-sdpa", "tiny_llama-eager", "tiny_llama-sdpa", "tiny_bert-sdpa"])
    parser.add_argument("--methods", nargs="+", default=["actnn", "gact", "mesa", "division"])
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4, 2])
    parser.add_argument("--json", default="bench_out/activation_fidelity.json")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        model, loss_fn = build(name)
        ref, _ = gradients(model, loss_fn, None)
        configs = [(m, b, True) for m in args.methods for b in args.bits]
        if "actnn" in args.methods:  # what the ReLU sign mask buys
            configs += [("actnn", b, False) for b in args.bits if b < 8]
        for method, bits, preserve in configs:
            settings = dict(method=method, bits=bits, preserve_zeros=preserve)
            got, engine = gradients(model, loss_fn, settings)
            row = {"model": name, "method": method, "bits": bits, "preserve_zeros": preserve,
                   "ratio": engine.last_report.ratio, **compare(got, ref)}
            rows.append(row)
            print(f"{name} {method}-{bits} preserve_zeros={preserve}: worst {row['worst_cosine']:.5f}", file=sys.stderr)
    lines = ["| model | config | worst per-parameter cosine | (parameter) | whole-gradient cosine | in-scope ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        config = f"{r['method']} {r['bits']}-bit" + ("" if r["preserve_zeros"] else ", no sign mask")
        lines.append(f"| {r['model']} | {config} | {r['worst_cosine']:.5f} | {r['worst_parameter']} | "
                     f"{r['whole_cosine']:.5f} | {r['ratio']:.2f}x |")
    print("\n".join(lines))
    write_report(args.json, rows)


if __name__ == "__main__":
    main()
