"""One rank of the DDP failure test: the docs/howto/ddp.md loop, one rank raises at step 12.

argv: rank, world size, port, run_dir, failing rank, mode ("with" or "bare": the Monitor is
closed by ``with`` or left to gradwatch's exit handling).
"""

import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradwatch as gw


class UserError(RuntimeError):
    """The user's own failure."""


def main():
    rank, world, port, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    failing, mode = int(sys.argv[5]), sys.argv[6]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1)

    def train(mon):
        for step in range(20):
            x, y = torch.randn(64, 20, generator=data), torch.randint(0, 2, (64,), generator=data)
            share = slice(rank * 64 // world, (rank + 1) * 64 // world)
            if rank == failing and step == 12:
                print(f"failing at {time.time()}", flush=True)
                raise UserError(f"rank {rank} failed at step {step}")
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[share]), y[share])
            loss.backward()
            opt.step()
            mon.step(loss=loss)
            print(f"step {step}", flush=True)

    if mode == "with":
        with gw.watch(model.module, run_dir, optimizer=opt, flush_every=5) as mon:
            train(mon)
    else:
        train(gw.watch(model.module, run_dir, optimizer=opt, flush_every=5))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
