"""The Hugging Face callback under Accelerate's FSDP2 (``fsdp_version=2``), one rank of two.

argv: run_dir. Launched with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); gloo on CPU. Both ranks train on the same 8 examples a step
(a fixed stream, no distributed sampler split: see ``Examples``), so the union batch of a
step is those 8.
"""

import os
import sys

import torch
import transformers
from torch import nn
from torch.utils.data import IterableDataset

from gradwatch.integrations.transformers import GradwatchTrainerCallback

BATCH, STEPS = 8, 4


class Net(nn.Module):
    """An MLP that returns the loss, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(12, 32)
        self.act = nn.Tanh()
        self.down = nn.Linear(32, 3)

    def forward(self, x, labels=None):
        logits = self.down(self.act(self.up(x)))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Examples(IterableDataset):
    """A fixed stream; every rank iterates all of it (each takes its own share by rank)."""

    def __init__(self, n=BATCH * STEPS):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 12, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __iter__(self):
        for i in range(len(self.x)):
            yield {"x": self.x[i], "labels": self.y[i]}


def main():
    torch.set_num_threads(1)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(sys.argv[1], "hf"), per_device_train_batch_size=BATCH // 2,
        max_steps=STEPS, learning_rate=0.1, optim="sgd", lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=0.0, report_to=[], use_cpu=True, seed=0,
        logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        fsdp="full_shard", fsdp_config={"fsdp_version": 2, "reshard_after_forward": True},
    )
    cb = GradwatchTrainerCallback(os.path.join(sys.argv[1], "run"), detail_every=1,
                                  diagnose=False)
    trainer = transformers.Trainer(model=Net(), args=args, train_dataset=Examples(),
                                   callbacks=[cb])
    trainer.train()


if __name__ == "__main__":
    main()
