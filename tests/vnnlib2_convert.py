"""A small VNN-LIB 1.0 -> 2.0 converter for the tests (the VNN-COMP 2021 properties).

``X_i`` becomes ``X[multi-index of i in the ONNX input shape]``, ``Y_j`` becomes ``Y[0,j]``; numerals are
rewritten in the 2.0 number syntax (``digit+ '.' digit+``, no exponent); ``declare-const`` lines are
replaced by one ``declare-network`` block typed ``real``.  Only the 1.0 subset those properties use
(``assert``, ``and``, ``or``, ``<=``, ``>=``) is handled.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import numpy as np

_TOKEN = re.compile(r"[()]|[^\s()]+")


def _number(tok: str) -> str:
    s = format(Decimal(tok), "f")
    return s if "." in s else s + ".0"


def convert(text: str, input_shape: tuple[int, ...], n_out: int, network: str = "net") -> str:
    n_in = int(np.prod(input_shape))
    out = ["(vnnlib-version <2.0>)",
           f"(declare-network {network}",
           f"    (declare-input X real [{','.join(map(str, input_shape))}])",
           f"    (declare-output Y real [1,{n_out}])",
           ")"]
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if not line or line.startswith("(declare-const"):
            continue
        toks = []
        for tok in _TOKEN.findall(line):
            m = re.fullmatch(r"([XY])_(\d+)", tok)
            if m:
                k = int(m.group(2))
                if m.group(1) == "X":
                    assert k < n_in
                    toks.append("X[" + ",".join(str(int(i)) for i in np.unravel_index(k, input_shape)) + "]")
                else:
                    toks.append(f"Y[0,{k}]")
            elif re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", tok):
                toks.append(_number(tok))
            else:
                toks.append(tok)
        s = " ".join(toks).replace("( ", "(").replace(" )", ")")
        out.append(s)
    return "\n".join(out) + "\n"


def convert_file(path: str | Path, input_shape, n_out: int, network: str = "net") -> str:
    return convert(Path(path).read_text(), tuple(input_shape), n_out, network)
