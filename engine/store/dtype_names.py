"""The dtypes a checkpoint can hold: safetensors' names, torch's names, bytes per element.

No torch here, so reading manifests (listing, verifying, cleaning a run directory from the
shell) does not pay for importing it; engine/store/identity.py maps these names to torch dtypes.
"""

# safetensors dtype name -> (torch dtype name, bytes per element)
DTYPES = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "U16": ("uint16", 2), "U32": ("uint32", 4), "U64": ("uint64", 8), "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1), "C64": ("complex64", 8),
}  # fmt: skip
ITEMSIZE = {name: size for name, (_torch_name, size) in DTYPES.items()}
