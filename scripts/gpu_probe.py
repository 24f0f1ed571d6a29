"""A rank program for scripts/gpu_check.py: which GPU does this MPI rank see?"""
import os

rank = os.environ.get("OMPI_COMM_WORLD_RANK")
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
try:
    import torch

    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0) if count else "-"
except ImportError:
    count, name = "?", "no torch here"
print(f"rank {rank}: CUDA_VISIBLE_DEVICES={visible}; torch sees {count} device(s): {name}",
      flush=True)
