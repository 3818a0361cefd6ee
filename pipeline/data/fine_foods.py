"""Amazon fine-food reviews (`small_fine_foods`), real text data that installs offline.

Debian's `r-cran-modeldata` ships the R package modeldata, whose `small_fine_foods` holds 4,000 train
and 1,000 test reviews (`training_data`, `testing_data`: columns `product`, `review`, `score`).
`score` is "great" or "other"; labels here are **great = 1, other = 0** (`CLASSES[label]`).

The data sits in R's lazy-load database: `data/Rdata.rdx` (a gzip RDS index: object name -> offset,
length in `Rdata.rdb`) and `data/Rdata.rdb` (per object: 4-byte big-endian uncompressed length, a type
byte, then the compressed R serialization; `Z` = raw LZMA2, `2` = bzip2, `1` = zlib, `0` = none).
We locate and decompress the two objects here and parse them with the `rdata` package.

    python -m pipeline.data.fine_foods --out fine_foods.npz --tokenizer pipeline/models/text-default --max-len 128

writes int64 `input_ids_{train,test}`, `attention_mask_{train,test}`, `y_{train,test}` and
`classes` = ["other", "great"].
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import lzma
import os
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

MODELDATA_DIRS = ("/usr/lib/R/site-library/modeldata/data", "/usr/local/lib/R/site-library/modeldata/data")
CLASSES = ["other", "great"]  # label 0 = "other", 1 = "great"
INSTALL_FIX = "run `apt-get install r-cran-modeldata` (or set EDGE_COMPRESS_MODELDATA to its data/ folder)"
SOURCE = "small_fine_foods from R modeldata (Debian r-cran-modeldata), 4,000 train / 1,000 test"


@dataclass
class FineFoods:
    train_texts: list[str]
    y_train: np.ndarray  # int64, great = 1, other = 0
    test_texts: list[str]
    y_test: np.ndarray
    classes: list[str]
    source: str  # path of the Rdata.rdb read
    sha256: str  # of that Rdata.rdb


def find_modeldata(root: str | os.PathLike | None = None) -> Path:
    """The modeldata `data/` folder holding Rdata.rdb and Rdata.rdx; a UserError when it is missing."""
    candidates = [root] if root else [os.environ.get("EDGE_COMPRESS_MODELDATA"), *MODELDATA_DIRS]
    for c in filter(None, candidates):
        d = Path(c)
        if (d / "Rdata.rdb").is_file() and (d / "Rdata.rdx").is_file():
            return d
    looked = ", ".join(str(c) for c in filter(None, candidates))
    raise UserError(f"the R modeldata package (small_fine_foods reviews) was not found (looked in {looked})",
                    INSTALL_FIX)


def _import_rdata():
    try:
        import rdata
    except ImportError:
        raise UserError("reading small_fine_foods needs the `rdata` package",
                        "pip install -r requirements.txt (rdata, pandas, xarray)") from None
    return rdata


def _decompress(blob: bytes, name: str) -> bytes:
    n = struct.unpack(">I", blob[:4])[0]
    kind, body = blob[4:5], blob[5:]
    if kind == b"Z":
        out = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[
            {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]).decompress(body)
    elif kind == b"2":
        out = bz2.decompress(body)
    elif kind == b"1":
        out = zlib.decompress(body)
    elif kind == b"0":
        out = body
    else:  # compress = TRUE databases have no type byte: zlib right after the length
        out = zlib.decompress(blob[4:])
    if len(out) != n:
        raise UserError(f"Rdata.rdb: object {name} decompressed to {len(out)} bytes, its header says {n}",
                        "reinstall r-cran-modeldata (the file looks damaged)")
    return out


def read_lazyload(data_dir: Path, names: tuple[str, ...]) -> dict:
    """Objects `names` of an R lazy-load database (`data_dir/Rdata.{rdx,rdb}`), converted by rdata."""
    rdata = _import_rdata()
    with warnings.catch_warnings():  # "Unknown file type: assumed RDS", "Missing constructor for tbl_df"
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(data_dir / "Rdata.rdx"))
        variables = index["variables"]
        missing = [n for n in names if n not in variables]
        if missing:
            raise UserError(f"{data_dir}/Rdata.rdx has no object {', '.join(missing)}",
                            "install the Debian r-cran-modeldata package (it ships small_fine_foods)")
        out = {}
        with open(data_dir / "Rdata.rdb", "rb") as f:
            for name in names:
                offset, length = (int(v) for v in variables[name])
                f.seek(offset)
                raw = _decompress(f.read(length), name)
                out[name] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


def _split(df, name: str) -> tuple[list[str], np.ndarray]:
    texts = [str(t) for t in df["review"]]
    scores = [str(s) for s in df["score"]]
    unknown = sorted(set(scores) - set(CLASSES))
    if unknown:
        raise UserError(f"small_fine_foods {name}: unexpected scores {unknown}", "expected only 'great' / 'other'")
    return texts, np.array([CLASSES.index(s) for s in scores], dtype=np.int64)


def load_fine_foods(root: str | os.PathLike | None = None) -> FineFoods:
    """Train/test review texts and int64 labels (great = 1, other = 0) of modeldata's small_fine_foods.

    4,000 train (2,600 great) and 1,000 test (658 great) reviews, in the package's order. `root` is the
    modeldata `data/` folder (default: $EDGE_COMPRESS_MODELDATA, then Debian's install path). Raises a
    UserError naming `apt-get install r-cran-modeldata` when the package is not installed.
    """
    d = find_modeldata(root)
    objs = read_lazyload(d, ("training_data", "testing_data"))
    x_tr, y_tr = _split(objs["training_data"], "training_data")
    x_te, y_te = _split(objs["testing_data"], "testing_data")
    rdb = d / "Rdata.rdb"
    return FineFoods(x_tr, y_tr, x_te, y_te, list(CLASSES), str(rdb), hashlib.sha256(rdb.read_bytes()).hexdigest())


def load_tokenizer(path: str | os.PathLike):
    """A `tokenizers.Tokenizer` from a tokenizer.json file, or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"tokenizer {path} not found", "pass a tokenizer.json or a folder holding one "
                        "(e.g. pipeline/models/text-default)")
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(p))


def encode(tokenizer, texts: list[str], max_len: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """int64 (N, max_len) input_ids and attention_mask: [CLS] text [SEP], truncated, right-padded with [PAD]."""
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise UserError("the tokenizer has no [PAD] token", "use a tokenizer trained with [PAD] (id 0)")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(tokenizer.to_str())  # padding/truncation are set on a copy: the caller's is left alone
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=max_len, direction="right")
    encs = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encs], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
    return ids, mask


def export_npz(out: str | os.PathLike, tokenizer, max_len: int = 128, root=None) -> dict:
    """Tokenize small_fine_foods and write the .npz the pipeline's text data form reads; returns a summary."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    ds = load_fine_foods(root)
    ids_tr, m_tr = encode(tokenizer, ds.train_texts, max_len)
    ids_te, m_te = encode(tokenizer, ds.test_texts, max_len)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, input_ids_train=ids_tr, attention_mask_train=m_tr, y_train=ds.y_train,
             input_ids_test=ids_te, attention_mask_test=m_te, y_test=ds.y_test, classes=np.array(ds.classes))
    return {"out": str(out), "train": len(ids_tr), "test": len(ids_te), "max_len": max_len,
            "truncated_train": int((m_tr[:, -1] == 1).sum()), "rdb_sha256": ds.sha256}


def dataset(tokenizer_dir: str | os.PathLike | None = None, max_len: int = 128, root=None):
    """small_fine_foods as a pipeline Dataset: input_ids + attention_mask (int64, (N, max_len)) tokenized
    in memory with the bundled text model's tokenizer (or `tokenizer_dir`). Its meta records the
    tokenizer file, sha256, maximum length, padding and truncation (the hand-off ships them)."""
    from pipeline.data import Dataset
    from pipeline.hashing import sha256_file
    from pipeline.models import TEXT_DEFAULT_DIR
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else TEXT_DEFAULT_DIR
    tok_file = tok_dir / "tokenizer.json" if tok_dir.is_dir() else tok_dir
    tokenizer = load_tokenizer(tok_file)
    ff = load_fine_foods(root)
    ids_tr, m_tr = encode(tokenizer, ff.train_texts, max_len)
    ids_te, m_te = encode(tokenizer, ff.test_texts, max_len)
    from pipeline.data.inputs import Inputs
    meta = {"tokenizer": {"file": str(tok_file), "sha256": sha256_file(tok_file), "max_len": max_len,
                          "padding": "right", "pad_token": "[PAD]", "truncation": f"to {max_len} tokens",
                          "template": "[CLS] text [SEP]", "library": "tokenizers"},
            "text_source": {"file": ff.source, "sha256": ff.sha256}}
    return Dataset("fine-foods", Inputs({"input_ids": ids_tr, "attention_mask": m_tr}), ff.y_train,
                   Inputs({"input_ids": ids_te, "attention_mask": m_te}), ff.y_test, list(ff.classes),
                   (0.0,), (1.0,), source=f"small_fine_foods ({ff.source})", meta=meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write small_fine_foods as token ids: an .npz with input_ids_*, "
                                 "attention_mask_*, y_* (int64) and classes")
    ap.add_argument("--out", type=Path, required=True, help="the .npz to write")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json, or a folder holding one")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--modeldata", default=None, help="modeldata data/ folder (default: Debian's)")
    args = ap.parse_args(argv)
    try:
        summary = export_npz(args.out, args.tokenizer, args.max_len, args.modeldata)
    except UserError as e:
        print(e.line(), file=sys.stderr)
        return e.exit_code
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
