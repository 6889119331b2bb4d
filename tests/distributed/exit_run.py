"""Two gloo processes that run asynchronous collectives and then simply end (no destroy_process_group of their
own). With argument "hook" they first call posttrain's destroy_process_group_at_exit(), as every trainer does when
a process group exists. Without the hook about 1 run in 4 aborts at interpreter teardown (SIGABRT, "terminate
called without an active exception") on torch 2.13 / 2 CPU cores."""

import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
if len(sys.argv) > 1 and sys.argv[1] == "hook":
    from posttrain.models.sharding import destroy_process_group_at_exit

    destroy_process_group_at_exit()
buf = torch.ones(1000)
for _ in range(20):
    for work in [dist.all_reduce(buf, async_op=True) for _ in range(4)]:
        work.wait()
gathered = [torch.empty(1) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, torch.tensor([float(dist.get_rank())]))
print("done", dist.get_rank(), flush=True)
