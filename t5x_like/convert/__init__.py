"""Checkpoint conversion: Hugging Face T5 / UL2 / Llama both ways, T5X legacy import, inspection.

One module per format maps that format's tensor names onto our parameter tree (`hf_t5`,
`hf_llama`, `t5x_legacy`); `tensors` streams them one at a time in either direction; `hf` and
`model_dir` read and write whole directories; `inspection` describes a checkpoint; `cli` is the
`t5x-like convert` and `t5x-like inspect` commands. See docs/convert.md.
"""
