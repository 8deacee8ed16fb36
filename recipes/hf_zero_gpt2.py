"""ZeRO data parallelism for a tiny GPT-2 with the stock HF Trainer: effplug's DeepSpeed config, CPU or CUDA.

    torchrun --nproc_per_node 2 recipes/hf_zero_gpt2.py                 # ZeRO-2
    torchrun --nproc_per_node 2 recipes/hf_zero_gpt2.py --stage 3       # parameters partitioned too
    torchrun --nproc_per_node 2 recipes/hf_zero_gpt2.py --stage 3 --offload all

The only effplug line is ``TrainingArguments(deepspeed=effplug.parallel.zero.deepspeed_config(...))``; on CPU
the processes use gloo and DeepSpeed's CPU accelerator. Rank 0 prints the validation loss, the per-rank
model-state bytes the ZeRO formula predicts, and what the engine holds after a step (parameters and optimizer
states; under DeepSpeed, accelerate runs backward and step together, so the gradient partition is already
freed when a callback can look).
"""

from __future__ import annotations

import argparse

import torch
import transformers

from effplug import data, models
from effplug.parallel.zero import deepspeed_config, estimate_memory, model_state_bytes


class _MeasureStates(transformers.TrainerCallback):
    def __init__(self):
        self.trainer, self.states = None, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.states is None and state.global_step >= 2:
            held = model_state_bytes(self.trainer.model_wrapped)
            self.states = {"params": held["params"], "optimizer": held["optimizer"], "offloaded": held["offloaded"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--offload", default=None, choices=["optimizer", "all"])
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--out", default="zero_gpt2")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    block = 64
    corpus, (train_x, _), (val_x, _) = data.char_lm_windows(block)
    model = models.tiny_gpt2(vocab_size=corpus.vocab_size, n_positions=block, n_embd=64, n_layer=2, n_head=4)
    num_params = sum(p.numel() for p in model.parameters())
    on_gpu = torch.cuda.is_available()
    config = deepspeed_config(args.stage, args.offload, param_persistence_threshold=0,
                              precision="bf16" if on_gpu else "fp32")
    training_args = transformers.TrainingArguments(
        output_dir=args.out, max_steps=args.max_steps, per_device_train_batch_size=16, learning_rate=3e-3,
        logging_steps=max(args.max_steps // 10, 1), save_strategy="no", report_to=[], use_cpu=not on_gpu,
        ddp_backend=None if on_gpu else "gloo", deepspeed=config)
    measure = _MeasureStates()
    trainer = transformers.Trainer(model=model, args=training_args, callbacks=[measure],
                                   train_dataset=[{"input_ids": x, "labels": x} for x in train_x],
                                   eval_dataset=[{"input_ids": x, "labels": x} for x in val_x])
    measure.trainer = trainer
    trainer.train()
    metrics = trainer.evaluate()
    world = training_args.world_size
    # DeepSpeed in fp32 keeps an fp32 master copy next to Adam's moments: 4 + 4 + 12 bytes per parameter
    formula = estimate_memory(num_params, world, args.stage, param_bytes=4, grad_bytes=4, optimizer_bytes=12,
                              offload=args.offload)
    result = {"val_loss": metrics["eval_loss"], "measured": measure.states,
              "formula": {"params": formula.param_bytes, "optimizer": formula.optimizer_bytes,
                          "offloaded": formula.offloaded_bytes}}
    if trainer.is_world_process_zero():
        print(f"ZeRO-{args.stage} on {world} ranks: val loss {result['val_loss']:.3f}")
        print(f"per-rank bytes measured {result['measured']}, formula {result['formula']}")
    return result


if __name__ == "__main__":
    main()
