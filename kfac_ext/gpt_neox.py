"""kfac-pytorch's GPT-NeoX integration (``kfac.gpt_neox``) is not supported.

``kfac.gpt_neox.GPTNeoXKFACPreconditioner`` preconditions the tensor-parallel
layers of GPT-NeoX (Megatron's ColumnParallelLinear / RowParallelLinear under
DeepSpeed's pipeline engine), gathering factors across model-parallel ranks.
kfac_ext preconditions whole layers (Linear, Conv2d, HF Conv1D, attention,
Embedding) under data parallelism only, so there is nothing here to switch to: importing this module says so rather
than failing later with a missing name.
"""

raise ImportError(
    "kfac_ext.gpt_neox: kfac-pytorch's GPT-NeoX integration (kfac.gpt_neox, "
    "GPTNeoXKFACPreconditioner for Megatron tensor-parallel layers under DeepSpeed) is not "
    "supported by kfac_ext, which preconditions whole layers under data parallelism only, "
    "not tensor-parallel shards; keep kfac-pytorch for GPT-NeoX"
)
