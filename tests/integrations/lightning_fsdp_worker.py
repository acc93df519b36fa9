"""Lightning's ModelParallelStrategy on 2 CPU processes, FSDP2 applied in configure_model.

argv: run_dir. Lightning starts the second process itself (it runs this script again).
"""

import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset

from gradwatch.integrations.lightning import GradwatchCallback


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 2))


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 20, generator=g), torch.randint(0, 2, (64,), generator=g))


class Sharded(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = make_net()

    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main():
    torch.set_num_threads(1)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=2, strategy=ModelParallelStrategy(),
        callbacks=[GradwatchCallback(sys.argv[1], detail_every=1)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False)
    # no distributed sampler: both ranks take the same 16 samples a step (4 steps), so the
    # union batch of a step is those 16
    trainer.fit(Sharded(), DataLoader(dataset(), batch_size=16))


if __name__ == "__main__":
    main()
