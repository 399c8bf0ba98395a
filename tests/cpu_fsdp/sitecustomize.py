"""Test-only, on PYTHONPATH of the processes that tests/test_finetune_distributed.py launches: lets
accelerate run FSDP in CPU processes (gloo).

accelerate turns its FSDP plugin on for GPU-like devices only and leaves CPU processes as MULTI_CPU
(plain data parallel), while torch's FSDP2 (`fully_shard`) itself runs on CPU with gloo. Once the
accelerator state is built, this sets the distributed type to FSDP and keeps the plugin accelerate
built from `accelerate launch`'s environment, so the trainer shards, gathers and saves exactly as it
does on GPUs. Nothing here runs unless accelerate launch asked for FSDP (ACCELERATE_USE_FSDP=true).
"""

import os

if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
    from accelerate.utils import DistributedType

    from accelerate import state as _state

    _init = _state.AcceleratorState.__init__

    def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            _state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    _state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
