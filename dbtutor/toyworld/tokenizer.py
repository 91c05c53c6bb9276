"""Build the real CLIP BPE tokenizer files (vocab.json, merges.txt) from open_clip's bpe_simple_vocab_16e6.txt.gz."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
LICENSE_NOTE = """The vocabulary and merges in this folder are OpenAI CLIP's byte-pair encoding, built from
bpe_simple_vocab_16e6.txt.gz as shipped by the open-clip-torch package (MIT License):

Copyright (c) 2012-2021 Gabriel Ilharco, Mitchell Wortsman, Nicholas Carlini, Rohan Taori, Achal Dave,
Vaishaal Shankar, John Miller, Hongseok Namkoong, Hannaneh Hajishirzi, Ali Farhadi, Ludwig Schmidt
Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and
to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of
the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO
THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS
IN THE SOFTWARE.
"""


def find_bpe_file() -> Path:
    """Locate the BPE merges shipped inside the open_clip package (without importing it: it needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip is not installed: run `pip install --no-deps open-clip-torch` "
                         "(only needed to rebuild the tokenizer files)")
    path = Path(list(spec.submodule_search_locations)[0]) / BPE_FILE
    if not path.exists():
        raise SystemExit(f"{path} not found in the installed open_clip package")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode map (as in openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_vocab(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) exactly as openai's CLIP constructs them: 49,408 tokens."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer(out_dir: Path, model_max_length: int = 32, bpe_path: Path | None = None):
    """Write a diffusers-style `tokenizer/` folder (vocab.json, merges.txt, configs, license) into out_dir."""
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_clip_vocab(bpe_path or find_bpe_file())
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"),
                        model_max_length=model_max_length, pad_token="<|endoftext|>")
    tok.save_pretrained(out_dir)
    (out_dir / "LICENSE-open_clip.txt").write_text(LICENSE_NOTE)
    return tok


SHIPPED = Path(__file__).resolve().parents[2] / "data" / "models" / "toyworld" / "tokenizer"


def prepare_tokenizer(out_dir: Path, model_max_length: int = 32):
    """Build the tokenizer folder from open_clip's BPE file, or copy the shipped build when open_clip is absent."""
    import shutil
    from transformers import CLIPTokenizer
    out_dir = Path(out_dir)
    if not (out_dir / "vocab.json").exists():
        if importlib.util.find_spec("open_clip") is not None:
            write_tokenizer(out_dir, model_max_length)
        else:
            shutil.copytree(SHIPPED, out_dir, dirs_exist_ok=True)
    return CLIPTokenizer.from_pretrained(out_dir)
