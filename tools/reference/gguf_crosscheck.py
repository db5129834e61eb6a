#!/usr/bin/env python3
"""GGUF cross-checks of `anatomy convert` against llama.cpp's own tools (fixtures for Rust tests).

Three parts. The first two each write one JSON fixture under tests/fixtures/gguf/; the Rust tests
`tools/tests/gguf_crosscheck.rs` compare our converter and our dequantization with them, so CI
needs no Python. The third writes llama.cpp's own GGUF files for one fixture, which the runtime
must run.

1. `names`  -> tests/fixtures/gguf/llamacpp_names.json
   What llama.cpp's converter writes for the committed tiny checkpoints
   tests/fixtures/qwen2_5_vl/{square,wide}/model at `--outtype f32`: for the language-model file
   and the `--mmproj` file, the sorted metadata keys with their value types (`UINT32`,
   `ARRAY[INT32]`, ...) and values (hyper-parameters, token ids, image mean/std, and the tokenizer:
   tokens, token types, merges, chat template), and every tensor's name, ggml shape (ne0 first)
   and type.

   How it was made (exactly):
     pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36   (sdist)
     tar xf llama_cpp_python-0.3.36.tar.gz     (vendors llama.cpp commit 0c1e570 under vendor/llama.cpp)
     LLAMA_CPP=.../vendor/llama.cpp /tmp/refvenv/bin/python tools/reference/gguf_crosscheck.py names
   with /tmp/refvenv holding tools/reference/requirements.txt (torch 2.15.0, transformers 5.23.0).
   The script copies convert_hf_to_gguf.py, conversion/ and gguf-py/ into a scratch directory and
   patches the copy only: llama.cpp identifies a BPE pre-tokenizer by a sha256 of the token ids of
   a test string and refuses unknown ones ("BPE pre-tokenizer was not recognized"); the fixtures'
   tiny tokenizer is unknown, so the scratch copy maps its hash (computed here with the same
   string and transformers' AutoTokenizer, as the converter does) to "qwen2", which is what the
   real Qwen2.5-VL tokenizer's hash maps to. One more patch: the projector's merger tensors
   (`visual.merger.mlp.{0,2}`) are looked up in a per-block name table with `depth` entries, so
   the square case (vision depth 2) fails with "Can not map tensor 'visual.merger.mlp.2.bias'";
   the copy builds that table with at least 3 entries (what is written is unchanged). Nothing
   else is changed. The converter imports sentencepiece before falling back to the BPE vocab, so
   the venv also needs `pip install sentencepiece` (0.2.3 here). The converter then runs
   twice per case: `convert_hf_to_gguf.py DIR --outtype f32 --outfile LM.gguf` and the same with
   `--mmproj`, and the files are read back with the vendored gguf-py.

2. `dequant` -> tests/fixtures/gguf/pypi_gguf_dequant.json
   PyPI gguf (0.19.0, `pip install gguf==0.19.0 numpy`) reads OUR files and dequantizes each
   tensor with `gguf.quants.dequantize`: `anatomy convert` of the square and wide fixtures at
   q8_0, q4_k_m and q5_k_m (types F32, F16, Q8_0, Q5_0, Q5_1) and of a synthetic checkpoint with
   256-multiple rows (Q4_K, Q5_K, Q6_K), which the Rust test `kquant_recipes` writes when
   ANATOMY_KQUANT_DIR is set. Per tensor it records the type, shape, the sum, sum of |x| and sum
   of x^2 (float64) of the dequantized values, and 16 values at fixed positions. The converter
   and the synthetic weights are deterministic, so the Rust test regenerates the same files and
   compares its own dequantization with these numbers.
     /tmp/ggufvenv/bin/python tools/reference/gguf_crosscheck.py dequant
   (builds and runs `cargo run -p anatomy-cli` and `cargo test -p anatomy-cli --test
   gguf_crosscheck kquant`; set ANATOMY_BIN to use an existing `anatomy` binary.)

3. `files` -> tests/fixtures/gguf/llamacpp/square-f32.gguf and square-f32-mmproj.gguf
   The two files llama.cpp's converter writes for the `square` fixture at `--outtype f32`, with
   the same scratch copy and the same two commands as `names` (so the same LLAMA_CPP and venv):
     LLAMA_CPP=.../vendor/llama.cpp /tmp/refvenv/bin/python tools/reference/gguf_crosscheck.py files
   They are kept as they come out of the converter (718,496 bytes together; re-running rewrites
   byte-identical files, checked with sha256); the Rust test
   `llamacpp_files_run` in tools/tests/runtime_gguf.rs runs our runtime on them and requires
   HF's 16 recorded greedy tokens, so a file we did not write is known to load and run.

Run from the repository root. Deterministic: re-running rewrites identical files.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CASES = ["square", "wide"]

def scratch_converter(llama_cpp: Path, work: Path, hashes: set[str]) -> Path:
    """Copy of the converter whose pre-tokenizer table also knows `hashes` (as qwen2)."""
    conv = work / "llama.cpp"
    conv.mkdir()
    shutil.copy(llama_cpp / "convert_hf_to_gguf.py", conv)
    shutil.copytree(llama_cpp / "conversion", conv / "conversion")
    shutil.copytree(llama_cpp / "gguf-py", conv / "gguf-py")
    base = conv / "conversion" / "base.py"
    src = base.read_text()
    anchor = "        res = None\n\n        # NOTE: if you get an error here"
    assert src.count(anchor) == 1, "anchor for the hash patch not found"
    extra = "".join(f'        if chkhsh == "{h}":\n            res = "qwen2"  # anatomy-r1 tiny fixture tokenizer\n'
                    for h in sorted(hashes))
    src = src.replace(anchor, "        res = None\n" + extra + anchor[len("        res = None\n"):])
    # The projector's merger (`visual.merger.mlp.{0,2}`) is looked up in the per-block name table,
    # which has `depth` entries: a vision tower of depth 2 (the square case) cannot be converted.
    # Build the table with at least 3 entries; the block count written to the file is unchanged.
    table = "        self.tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, self.block_count)\n"
    assert src.count(table) == 1, "anchor for the mmproj name-table patch not found"
    src = src.replace(table, table.replace("self.block_count)", "max(self.block_count, 3))"))
    base.write_text(src)
    return conv


def chktxt(llama_cpp: Path) -> str:
    """The converter's pre-tokenizer test string, taken from its source (get_vocab_base_pre)."""
    src = (llama_cpp / "conversion" / "base.py").read_text()
    line = next(l for l in src.splitlines() if l.strip().startswith("chktxt = "))
    return ast.literal_eval(line.split("=", 1)[1].strip())


def tokenizer_hash(model_dir: Path, text: str) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return hashlib.sha256(str(tok.encode(text)).encode()).hexdigest()


def describe(reader, gguf) -> dict:
    keys = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's pseudo-fields (version, counts)
        t = field.types[0]
        entry: dict = {}
        def scalar(part, ty):
            return bytes(part).decode() if ty == gguf.GGUFValueType.STRING else part[0].item()

        if t == gguf.GGUFValueType.ARRAY:
            entry["type"] = f"ARRAY[{field.types[-1].name}]"
            entry["value"] = [scalar(field.parts[i], field.types[-1]) for i in field.data]
        else:
            entry["type"] = t.name
            entry["value"] = scalar(field.parts[field.data[0]], t)
        keys[name] = entry
    tensors = {
        t.name: {"shape": [int(d) for d in t.shape], "type": t.tensor_type.name}
        for t in reader.tensors
    }
    return {"keys": dict(sorted(keys.items())), "tensors": dict(sorted(tensors.items()))}


def part_names(args) -> None:
    llama_cpp = Path(args.llama_cpp or os.environ.get("LLAMA_CPP", ""))
    if not (llama_cpp / "convert_hf_to_gguf.py").exists():
        sys.exit("set LLAMA_CPP (or --llama-cpp) to llama.cpp's source directory")
    dirs = {c: FIXTURES / "qwen2_5_vl" / c / "model" for c in CASES}
    text = chktxt(llama_cpp)
    hashes = {tokenizer_hash(d, text) for d in dirs.values()}
    out: dict = {
        "generator": "tools/reference/gguf_crosscheck.py names",
        "llama_cpp": "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp (commit 0c1e570), convert_hf_to_gguf.py --outtype f32",
        "tokenizer_hash_mapped_to_qwen2": sorted(hashes),
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        conv = scratch_converter(llama_cpp, work, hashes)
        sys.path.insert(0, str(conv / "gguf-py"))
        import gguf

        version = next(l for l in (conv / "gguf-py" / "pyproject.toml").read_text().splitlines()
                       if l.startswith("version"))
        out["gguf_py_version"] = "vendored gguf-py " + version.split("=", 1)[1].strip().strip('"')
        for case, d in dirs.items():
            files = {}
            for kind, extra in [("language", []), ("mmproj", ["--mmproj"])]:
                dst = work / f"{case}-{kind}.gguf"
                r = subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(d),
                                    "--outtype", "f32", "--outfile", str(dst), *extra],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(conv / "gguf-py")})
                if r.returncode != 0:
                    sys.exit(f"convert_hf_to_gguf.py failed on {case} {kind}:\n{r.stderr[-4000:]}")
                files[kind] = describe(gguf.GGUFReader(dst), gguf)
            out["cases"][case] = files
    path = FIXTURES / "gguf" / "llamacpp_names.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def part_files(args) -> None:
    llama_cpp = Path(args.llama_cpp or os.environ.get("LLAMA_CPP", ""))
    if not (llama_cpp / "convert_hf_to_gguf.py").exists():
        sys.exit("set LLAMA_CPP (or --llama-cpp) to llama.cpp's source directory")
    case = "square"
    model = FIXTURES / "qwen2_5_vl" / case / "model"
    dst_dir = FIXTURES / "gguf" / "llamacpp"
    dst_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        conv = scratch_converter(llama_cpp, Path(tmp), {tokenizer_hash(model, chktxt(llama_cpp))})
        for suffix, extra in [("", []), ("-mmproj", ["--mmproj"])]:
            dst = dst_dir / f"{case}-f32{suffix}.gguf"
            r = subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(model),
                                "--outtype", "f32", "--outfile", str(dst), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(conv / "gguf-py")})
            if r.returncode != 0:
                sys.exit(f"convert_hf_to_gguf.py failed on {case}{suffix}:\n{r.stderr[-4000:]}")
            print(f"wrote {dst.relative_to(ROOT)} ({dst.stat().st_size} bytes)")


# Fixed sample positions, taken modulo the tensor's element count.
SAMPLES = [0, 33, 255, 257, 4097, 33333, 123457, 524287]


def anatomy(*args: str) -> None:
    binary = os.environ.get("ANATOMY_BIN")
    cmd = [binary] if binary else ["cargo", "run", "-q", "-p", "anatomy-cli", "--"]
    subprocess.run([*cmd, *args], check=True, cwd=ROOT)


def part_dequant(args) -> None:
    import numpy as np
    import gguf
    from gguf.quants import dequantize

    results: dict = {
        "generator": "tools/reference/gguf_crosscheck.py dequant",
        "gguf_py_version": getattr(gguf, "__version__", None) or _dist_version("gguf"),
        "samples": SAMPLES,
        "files": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files: list[tuple[str, Path]] = []
        for case in CASES:
            for recipe in ["q8_0", "q4_k_m", "q5_k_m"]:
                lm, mm = work / f"{case}-{recipe}.gguf", work / f"{case}-{recipe}-mmproj.gguf"
                anatomy("convert", str(FIXTURES / "qwen2_5_vl" / case / "model"), "--out", str(lm),
                        "--mmproj", str(mm), "--quant", recipe, "--quiet")
                files.append((f"{case}-{recipe}", lm))
                # The q5_k_m projector is the q4_k_m one (both F16): recorded once.
                if recipe != "q5_k_m":
                    files.append((f"{case}-{recipe}-mmproj", mm))
        kq = work / "kquant"
        subprocess.run(["cargo", "test", "-q", "-p", "anatomy-cli", "--test", "gguf_crosscheck",
                        "kquant_recipes", "--", "--exact"], check=True, cwd=ROOT,
                       env={**os.environ, "ANATOMY_KQUANT_DIR": str(kq)})
        for recipe in ["q4_k_m", "q5_k_m"]:
            files.append((f"kquant-{recipe}", kq / f"kquant-{recipe}.gguf"))
        for label, path in files:
            reader = gguf.GGUFReader(path)
            per = {}
            for t in reader.tensors:
                ne = [int(d) for d in t.shape]
                rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
                raw = np.asarray(t.data)
                values = dequantize(raw, t.tensor_type).astype(np.float32).reshape(-1)
                assert values.size == int(np.prod(ne)), (label, t.name)
                v64 = values.astype(np.float64)
                per[t.name] = {
                    "type": t.tensor_type.name,
                    "shape": ne,
                    "sum": float(v64.sum()),
                    "sum_abs": float(np.abs(v64).sum()),
                    "sum_sq": float((v64 * v64).sum()),
                    # Shortest decimals that give back the f32 (keeps the fixture small).
                    "samples": [float(str(values[i % values.size])) for i in SAMPLES],
                }
                assert rows * ne[0] == values.size
            results["files"][label] = per
    types = sorted({t["type"] for f in results["files"].values() for t in f.values()})
    print("types covered:", ", ".join(types))
    for needed in ["Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "F32"]:
        assert needed in types, f"{needed} not covered"
    path = FIXTURES / "gguf" / "pypi_gguf_dequant.json"
    # One line per tensor: small and still diffable.
    files = results.pop("files")
    lines = [json.dumps(results)[:-1] + ', "files": {']
    for i, (label, per) in enumerate(files.items()):
        lines.append(f" {json.dumps(label)}: {{")
        for j, (name, entry) in enumerate(per.items()):
            comma = "," if j + 1 < len(per) else ""
            lines.append(f"  {json.dumps(name)}: {json.dumps(entry)}{comma}")
        lines.append(" }" + ("," if i + 1 < len(files) else ""))
    lines.append("}}")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def _dist_version(name: str) -> str | None:
    from importlib.metadata import version

    return version(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["names", "dequant", "files"])
    p.add_argument("--llama-cpp", help="llama.cpp source directory (default $LLAMA_CPP)")
    args = p.parse_args()
    {"names": part_names, "dequant": part_dequant, "files": part_files}[args.part](args)


if __name__ == "__main__":
    main()
