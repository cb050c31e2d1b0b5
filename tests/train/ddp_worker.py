"""One rank of the two-process DDP test (started by torchrun from test_distributed.py).

usage: ddp_worker.py RECIPE.yaml RUN_DIR OUT_DIR [RESUME_RECIPE.yaml] — trains, then writes
OUT_DIR/rank<r>.pt with this rank's final weights and what its loaders saw, so the test can check
the ranks agree. With RESUME_RECIPE it then trains that recipe twice more, into OUT_DIR/whole and
into OUT_DIR/cut (rank 1 sends itself SIGINT after step 3, and the run is resumed in this
process), and writes OUT_DIR/resume<r>.pt with both runs' weights and statuses.
"""

import os
import signal
import sys

import torch

from cnnbench.train.config import load_recipe
from cnnbench.train.run import train_run

recipe_path, run_dir, out_dir = sys.argv[1:4]
rank = int(os.environ["RANK"])
seen = {}
runs = []


def remember(engine, progress):
    seen["engine"] = engine


def weights() -> dict:
    return {k: v.clone() for k, v in seen["engine"].model.state_dict().items()}


def train(*args, **kwargs):
    """train_run, as the next of several runs in this process. torch names a process group after a
    counter that destroy_process_group resets, so a second group in one torchrun worker would meet
    the first one's rendezvous keys in the agent's store (and hang, or connect to closed sockets);
    moving the counter on gives each run fresh keys. (`cnnbench train` runs once per process.)"""
    import torch.distributed.distributed_c10d as c10d

    c10d._world.group_count = 1000 * len(runs)
    runs.append(args)
    return train_run(*args, **kwargs)


result = train(load_recipe(recipe_path), run_dir, quiet=True, after_step=remember)
engine = seen["engine"]
torch.save({"model": engine.model.state_dict(), "status": result.status,
            "train_batches": len(engine.train_stream), "val_batches": len(engine.val_loader),
            "per_rank_batch": engine.val_loader.batch_size},
           os.path.join(out_dir, f"rank{rank}.pt"))

if len(sys.argv) > 4:
    recipe = load_recipe(sys.argv[4])
    whole = train(recipe, os.path.join(out_dir, "whole"), quiet=True, after_step=remember)
    whole_weights = weights()

    def interrupt(engine, progress):
        remember(engine, progress)
        if rank == 1 and progress.step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(recipe, os.path.join(out_dir, "cut"), quiet=True, after_step=interrupt)
    resumed = train(None, os.path.join(out_dir, "cut"), resume=True, quiet=True, after_step=remember)
    torch.save({"whole": whole_weights, "cut": weights(), "status": [whole.status, cut.status, resumed.status]},
               os.path.join(out_dir, f"resume{rank}.pt"))
