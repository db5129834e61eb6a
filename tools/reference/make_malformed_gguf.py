#!/usr/bin/env python3
"""Writes the corpus of malformed GGUF files in tests/fixtures/gguf/malformed/.

Each file breaks one rule of the format; `runtime/tests/gguf_malformed.rs` opens every file there and
requires the typed error its name starts with (e.g. `bad_magic-*.gguf` -> `GgufError::BadMagic`). The
files are tiny and committed, so CI (and the cargo-fuzz target, which seeds from them) needs no Python.
Run from the repository root: `python3 tools/reference/make_malformed_gguf.py` (standard library only).
"""
import os
import struct

OUT = os.path.join("tests", "fixtures", "gguf", "malformed")


def s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


def tinfo(name, dims, ggml_type, offset):
    return s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset)


def gguf(kvs, tensors, data=b"", version=3, n_tensors=None, n_kv=None, align=32):
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(tensors)
    head += b"\0" * ((-len(head)) % align)
    return head + data


ARCH = kv("general.architecture", 8, s("qwen2vl"))
F32_4 = tinfo("a", [4], 0, 0)
DATA16 = struct.pack("<4f", 1, 2, 3, 4) + b"\0" * 16

CASES = {
    "bad_magic-ggml": b"GGML" + b"\0" * 60,
    "truncated-empty": b"",
    "truncated-header": b"GGUF\x03\0\0",
    "truncated-kv_value": gguf([kv("general.architecture", 8, struct.pack("<Q", 7) + b"qw")], [])[:60],
    "truncated-tensor_info": gguf([ARCH], [F32_4])[:-40],
    "unsupported_version-1": gguf([ARCH], [], version=1),
    "unsupported_version-4": gguf([ARCH], [], version=4),
    "big_endian-v3": b"GGUF" + struct.pack(">I", 3) + b"\0" * 16,
    "absurd_count-kv": gguf([ARCH], [], n_kv=1 << 60),
    "absurd_count-tensors": gguf([ARCH], [], n_tensors=1 << 62),
    "absurd_count-array": gguf([kv("x", 9, struct.pack("<IQ", 4, 1 << 61))], []),
    "absurd_string-key": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 63) + b"abc" + b"\0" * 16,
    "absurd_string-value": gguf([kv("general.name", 8, struct.pack("<Q", 1 << 40) + b"abc")], []),
    "invalid_utf8-key": gguf([struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<I", 4) + struct.pack("<I", 1)], []),
    "unknown_value_type-13": gguf([kv("general.name", 13, b"\0" * 8)], []),
    "unknown_value_type-array_elem": gguf([kv("x", 9, struct.pack("<IQ", 77, 1) + b"\0" * 8)], []),
    "too_deep-arrays": gguf([kv("x", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0))], []),
    "duplicate_key-arch": gguf([ARCH, ARCH], []),
    "bad_alignment-zero": gguf([kv("general.alignment", 4, struct.pack("<I", 0))], [], align=32),
    "bad_alignment-not_pow2": gguf([kv("general.alignment", 4, struct.pack("<I", 48))], [], align=48),
    "key_type-alignment_string": gguf([kv("general.alignment", 8, s("32"))], []),
    "too_many_dims-5": gguf([ARCH], [tinfo("a", [1, 1, 1, 1, 4], 0, 0)], DATA16),
    "unknown_type-iq2": gguf([ARCH], [tinfo("a", [256], 16, 0)], b"\0" * 96),
    "unknown_type-huge": gguf([ARCH], [tinfo("a", [4], 0xFFFFFFFF, 0)], DATA16),
    "bad_shape-partial_block": gguf([ARCH], [tinfo("a", [31], 8, 0)], b"\0" * 64),
    "bad_shape-overflow": gguf([ARCH], [tinfo("a", [1 << 40, 1 << 40], 0, 0)], DATA16),
    "misaligned-offset": gguf([ARCH], [tinfo("a", [4], 0, 0), tinfo("b", [4], 0, 17)], DATA16 * 3),
    "out_of_range-past_end": gguf([ARCH], [tinfo("a", [64], 0, 0)], DATA16),
    "out_of_range-offset_overflow": gguf([ARCH], [tinfo("a", [4], 0, (1 << 64) - 32)], DATA16),
    "overlap-same_offset": gguf([ARCH], [tinfo("a", [8], 0, 0), tinfo("b", [4], 0, 0)], DATA16 * 2),
    "duplicate_tensor-a": gguf([ARCH], [tinfo("a", [4], 0, 0), tinfo("a", [4], 0, 32)], DATA16 * 2),
    # Structurally valid files that fail the Qwen2.5-VL accessors.
    "missing_key-hparams": gguf([ARCH], [F32_4], DATA16),
    "missing_tensor-token_embd": gguf(
        [ARCH] + [kv(f"qwen2vl.{k}", 4, struct.pack("<I", v)) for k, v in [("block_count", 1), ("context_length", 64), ("embedding_length", 4), ("feed_forward_length", 8), ("attention.head_count", 2), ("attention.head_count_kv", 1)]]
        + [kv("qwen2vl.rope.dimension_sections", 9, struct.pack("<IQ", 5, 4) + struct.pack("<4i", 1, 0, 0, 0)), kv("qwen2vl.rope.freq_base", 6, struct.pack("<f", 1e4)), kv("qwen2vl.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-6))],
        [F32_4], DATA16),
    "shape_mismatch-output_norm": gguf(
        [ARCH] + [kv(f"qwen2vl.{k}", 4, struct.pack("<I", v)) for k, v in [("block_count", 0), ("context_length", 64), ("embedding_length", 4), ("feed_forward_length", 8), ("attention.head_count", 2), ("attention.head_count_kv", 1)]]
        + [kv("qwen2vl.rope.dimension_sections", 9, struct.pack("<IQ", 5, 4) + struct.pack("<4i", 1, 0, 0, 0)), kv("qwen2vl.rope.freq_base", 6, struct.pack("<f", 1e4)), kv("qwen2vl.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-6))],
        [tinfo("token_embd.weight", [4, 2], 0, 0), tinfo("output_norm.weight", [8], 0, 32)], struct.pack("<8f", *range(8)) + struct.pack("<8f", *range(8))),
}

os.makedirs(OUT, exist_ok=True)
for name, data in CASES.items():
    with open(os.path.join(OUT, name + ".gguf"), "wb") as f:
        f.write(data)
print(f"wrote {len(CASES)} files to {OUT}")
