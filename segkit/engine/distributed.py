"""Decisions that every training process must take together."""

import torch.distributed as dist
from detectron2.utils import comm


def broadcast_from_main(obj):
    """``obj`` as the main process (rank 0) has it, on every rank; ``obj`` itself when not distributed.

    Only rank 0 holds evaluation results (COCOEvaluator returns {} elsewhere), so a decision taken
    from a metric is made there and sent to the others: a rank that decided alone would leave the
    rest waiting in the next all-reduce (gloo: "Connection closed by peer"; NCCL: a hang)."""
    if comm.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
