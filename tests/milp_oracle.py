"""An exact MILP oracle for small ReLU/LeakyReLU chain networks (tests only; scipy's HiGHS).

``spec_min(net, lower, upper, C, d)`` returns ``t* = min over lower <= x <= upper of max_k (C_k f(x) - d_k)``:
the specification ``C f(x) <= d`` is satisfiable (``sat``) iff ``t* <= 0``.  Each activation
``y = max(z, a z)`` (``a = 0`` for ReLU) with pre-activation bounds ``l <= z <= u`` from float64 interval
arithmetic (widened by 1e-9) is encoded exactly: stable neurons as ``y = z`` / ``y = a z``, unstable ones
with a binary ``delta`` (``delta = 1 <=> z >= 0``) by the big-M constraints
``y >= z, y >= a z, y <= z - (1-a) l (1-delta), y <= a z + (1-a) u delta``.
This is independent of relax/ (no bound propagation code is shared).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from nncertify.models import chain_stages


def spec_min(net, lower, upper, C, d, time_limit: float = 60.0) -> float:
    net64 = net.to(dtype=torch.float64)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # parameter-free nodes (flatten) take the default dtype in affine_matrix
    try:
        stages = chain_stages(net64)
    finally:
        torch.set_default_dtype(old)
    lo = lower.double().flatten().numpy()
    hi = upper.double().flatten().numpy()
    # variables: x (n0), then per affine stage its outputs z, per activation its outputs y and deltas
    nvar = len(lo)
    lbs, ubs, integ = list(lo), list(hi), [0] * len(lo)
    rows, rlo, rhi = [], [], []  # each row: dict var -> coef
    cur = list(range(len(lo)))
    cl, cu = lo.copy(), hi.copy()
    for st in stages:
        if st.kind == "affine":
            W, b = st.W.numpy(), st.b.numpy()
            Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
            zl = Wp @ cl + Wn @ cu + b - 1e-9
            zu = Wp @ cu + Wn @ cl + b + 1e-9
            new = list(range(nvar, nvar + W.shape[0]))
            nvar += W.shape[0]
            lbs += list(zl); ubs += list(zu); integ += [0] * W.shape[0]
            for i, v in enumerate(new):
                r = {v: 1.0}
                for j, c in zip(cur, W[i]):
                    if c != 0:
                        r[j] = r.get(j, 0.0) - c
                rows.append(r); rlo.append(b[i]); rhi.append(b[i])
            cur, cl, cu = new, zl, zu
        elif st.kind in ("relu", "leaky_relu"):
            a = 0.0 if st.kind == "relu" else float(st.node.attrs["negative_slope"])
            new = []
            nl, nu = [], []
            for z, l, u in zip(cur, cl, cu):
                y = nvar
                nvar += 1
                new.append(y)
                yl, yu = (l if l >= 0 else a * l), (u if u >= 0 else a * u)
                lbs.append(min(yl, yu) - 1e-9); ubs.append(max(yl, yu) + 1e-9); integ.append(0)
                nl.append(min(yl, yu) - 1e-9); nu.append(max(yl, yu) + 1e-9)
                if l >= 0:
                    rows.append({y: 1.0, z: -1.0}); rlo.append(0.0); rhi.append(0.0)
                elif u <= 0:
                    rows.append({y: 1.0, z: -a}); rlo.append(0.0); rhi.append(0.0)
                else:
                    dl = nvar
                    nvar += 1
                    lbs.append(0.0); ubs.append(1.0); integ.append(1)
                    rows.append({y: 1.0, z: -1.0}); rlo.append(0.0); rhi.append(np.inf)
                    rows.append({y: 1.0, z: -a}); rlo.append(0.0); rhi.append(np.inf)
                    # y - z - (1-a) l delta <= -(1-a) l
                    rows.append({y: 1.0, z: -1.0, dl: -(1 - a) * l}); rlo.append(-np.inf); rhi.append(-(1 - a) * l)
                    # y - a z - (1-a) u delta <= 0
                    rows.append({y: 1.0, z: -a, dl: -(1 - a) * u}); rlo.append(-np.inf); rhi.append(0.0)
            cur, cl, cu = new, np.array(nl), np.array(nu)
        else:
            raise ValueError(f"milp_oracle: unsupported stage {st.kind}")
    t = nvar
    nvar += 1
    lbs.append(-np.inf); ubs.append(np.inf); integ.append(0)
    Cn, dn = C.double().numpy(), d.double().numpy()
    for k in range(Cn.shape[0]):  # C_k y - d_k - t <= 0
        r = {t: -1.0}
        for j, c in zip(cur, Cn[k]):
            if c != 0:
                r[j] = r.get(j, 0.0) + c
        rows.append(r); rlo.append(-np.inf); rhi.append(dn[k])
    A = lil_matrix((len(rows), nvar))
    for i, r in enumerate(rows):
        for j, c in r.items():
            A[i, j] = c
    c = np.zeros(nvar)
    c[t] = 1.0
    res = milp(c, constraints=LinearConstraint(A.tocsr(), rlo, rhi), integrality=np.array(integ),
               bounds=Bounds(np.array(lbs), np.array(ubs)),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-9, "presolve": True})
    if res.status != 0:
        raise RuntimeError(f"milp_oracle: HiGHS status {res.status}: {res.message}")
    return float(res.fun)
