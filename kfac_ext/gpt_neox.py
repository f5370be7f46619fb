"""kfac-pytorch's GPT-NeoX integration (``kfac.gpt_neox``) is not supported.

``kfac.gpt_neox.GPTNeoXKFACPreconditioner`` preconditions the tensor-parallel
layers of GPT-NeoX (Megatron's ColumnParallelLinear / RowParallelLinear under
DeepSpeed's pipeline engine), gathering factors across model-parallel ranks.
kfac_ext registers ``nn.Linear`` / ``nn.Conv2d`` under data parallelism only,
so there is nothing here to switch to: importing this module says so rather
than failing later with a missing name.
"""

raise ImportError(
    "kfac_ext.gpt_neox: kfac-pytorch's GPT-NeoX integration (kfac.gpt_neox, "
    "GPTNeoXKFACPreconditioner for Megatron tensor-parallel layers under DeepSpeed) is not "
    "supported by kfac_ext, which preconditions nn.Linear / nn.Conv2d under data parallelism "
    "only; keep kfac-pytorch for GPT-NeoX"
)
