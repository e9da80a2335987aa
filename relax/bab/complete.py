"""Complete verification of a :class:`relax.spec.Query`: attack, incomplete bounds, then branch-and-bound.

Order (each stage only for what the previous ones left open; one time budget for all):

1. **PGD** with restarts on every specification (relax/bab/attack.py); a candidate is ``sat`` only
   after the exact float64 re-check.
2. **CROWN, then α-CROWN** over each input box (specifications sharing a box are bounded together:
   one intermediate-bound sweep, one row per specification row).  A specification is refuted when
   some row's certified lower bound exceeds its ``d``.
2b. **Refined intermediate bounds** (``refine``, relax/bab/refine.py; "auto": convolution-free ReLU nets
   with activation splitting): when α-CROWN leaves the query open, the pre-activation bounds of unstable
   neurons are tightened layer by layer by a per-neuron β-CROWN branch-and-bound (every bound proved)
   within ``refine_share`` of the time left; the root is re-bounded with them.
3. **Branch-and-bound** (relax/bab/search.py) per open specification, easiest first (largest root
   bound): input splitting (relax/bab/input_split.py) when the input has at most
   ``input_split_max`` values, β-CROWN activation splitting (relax/bab/beta_crown.py) otherwise, with
   PGD restarts from fresh seeds during the search.  On affine-ReLU chains input splitting searches the
   open specifications of one box together (shared bounds), with batched box CROWN
   (relax/bab/box_crown.py) and a time-sliced portfolio of two branchings.  Every phase checks the
   deadline; bounding works in pieces of about 0.3 s, so a query overruns its budget by about that.  ``unsat`` needs every specification proved; any
   specification that ends in timeout/unknown makes the query timeout/unknown (never a guess).
"""

from __future__ import annotations

import math
import time

import torch

from ...models.errors import InvalidArgumentError
from ...models.graph import Network
from ..spec import Query, SpecBatch, Verdict, outward_box, working_dtype
from .attack import check_counterexample, pgd_search
from .beta_crown import BaBSRPolicy, BetaCrown, FSBPolicy, make_bounder as relu_bounder
from .box_crown import AffineReluChain
from .refine import REFINE_MODES, refine_applies, refine_intermediate
from .input_split import ChainSplit, InputSplit, InputSplitPolicy, make_bounder as box_bounder
from .search import BaBProgress, branch_and_bound

DEFAULTS = dict(dtype=None, pgd_steps=50, pgd_restarts="auto", alpha_iters=50, alpha_lr=0.1, seed=0, bab=True,
                input_split="auto", input_split_max=16, batch=None, memory_budget=2e9, bab_iters=10,
                lr_alpha=0.1, lr_beta=0.05, progress=None, attack_every="auto", max_domains=None, threads=1,
                interm_iters=20, interm_lr=0.25, branching="babsr", fsb_k=4, chain=True,
                input_lookahead="portfolio", input_alpha_iters=10, input_refine_iters=3, input_combo_iters=0,
                input_alpha_lookahead="all", input_alpha_weight=4,
                refine="auto", refine_share=0.5, refine_batch=64)


def solve_query(net: Network, query: Query, *, timeout: float, start: float | None = None, **opts) -> Verdict:
    """Run :func:`_solve` with ``threads`` CPU threads (default 1: the search is many small tensor
    operations, for which intra-op threading costs more than it gains -- measured 3 us vs 10 ms per
    elementwise op on a loaded 2-core machine); the caller's thread count is restored."""
    threads = opts.get("threads", DEFAULTS["threads"])
    if threads is None or net.device.type != "cpu":
        return _solve(net, query, timeout=timeout, start=start, **opts)
    if not (isinstance(threads, int) and threads >= 1):
        raise InvalidArgumentError(f"verify_query: threads must be a positive integer, got {threads!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _solve(net, query, timeout=timeout, start=start, **opts)
    finally:
        torch.set_num_threads(old)


def _solve(net: Network, query: Query, *, timeout: float, start: float | None = None, **opts) -> Verdict:
    """The body of :func:`relax.spec.verify_query` (the query is already validated).

    Options: ``dtype`` (working dtype of the bounds; float64 when ``C`` is not exact in it),
    ``pgd_steps``/``pgd_restarts`` (50 / "auto": 500 before and 2000 per round during input splitting, 10 per specification otherwise; restarts are spread over the specifications, relax/bab/attack.py), ``alpha_iters``/``alpha_lr`` (root α-CROWN, 50/0.1),
    ``seed``, ``bab`` (True; False stops after α-CROWN), ``input_split`` ("auto": when the input has at
    most ``input_split_max`` = 16 values; or True/False), ``batch`` (domains popped per step; default 512
    for input splitting, 64 for activation splitting), ``memory_budget`` (bytes of open domains, 2e9),
    ``bab_iters``/``lr_alpha``/``lr_beta`` (β-CROWN per batch: 10 Adam steps, 0.1/0.05; 10 vs 20 measured
    on 5 closable ERAN images: the same domain counts, 10-20 % less CPU time),
    ``attack_every`` (seconds between PGD rounds during the search; "auto": 1 for input splitting, 5 otherwise; a round that took t s waits at least 5 t resp. 9 t), ``max_domains``,
    ``interm_iters``/``interm_lr`` (alpha-CROWN on the intermediate bounds before the search, 20/0.25),
    ``progress(spec_index, BaBProgress)``: called after every domain batch; ``threads`` (CPU threads, 1);
    ``branching`` (activation splitting: "babsr", default, or "fsb" = filtered smart branching) and
    ``fsb_k`` (FSB candidates per list, 4);
    ``chain`` (True: input splitting on affine-ReLU chains uses the batched relax/bab/box_crown.py bounds);
    ``input_lookahead`` ("portfolio": look-ahead and plain "sb" branching time-sliced; or "all" / "off", or
    "alpha": the fourth member below alone);
    ``input_alpha_iters``/``input_refine_iters`` (10/3; 0 = off): the portfolio's fourth member, plain "sb" with
    alpha-CROWN on the boxes CROWN leaves open and alpha-CROWN intermediate bounds where splitting stalls
    (relax/bab/box_crown.py ``alpha_bound``/``refine_intermediate``), with the look-ahead of ``input_alpha_lookahead``.
    ``input_alpha_lookahead`` ("all", or "two"/"off": the fourth member's branching, look-ahead as above) and
    ``input_alpha_weight`` (4: its time slice in multiples of the others'; with slices doubling each round it
    gets 4/7 of the time, measured: the three CROWN members' slowest ACAS Xu instance took 20 s of 116);
    ``input_combo_iters`` (0 = off): AND clauses left open on a box are refuted by a convex combination of their
    rows (relax/bab/box_crown.py ``combo_bound``: that many Adam steps on the weights, jointly with the slopes in
    the alpha member), at the root and in every portfolio member.
    ``refine`` ("auto": on for activation splitting on convolution-free ReLU networks, "bab": on, "off"):
    before the search, the intermediate bounds of unstable neurons are tightened layer by layer by a
    per-neuron β-CROWN branch-and-bound (relax/bab/refine.py; every bound proved, anytime) within
    ``refine_share`` (0.5) of the time left after α-CROWN, ``refine_batch`` (64) leaves split per round.
    """
    bad = sorted(set(opts) - set(DEFAULTS))
    if bad:
        raise InvalidArgumentError(f"verify_query: unknown option(s) {', '.join(bad)}; "
                                   f"known: {', '.join(sorted(DEFAULTS))}")
    o = {**DEFAULTS, **opts}
    if o["branching"] not in ("fsb", "babsr"):
        raise InvalidArgumentError(f"verify_query: branching must be 'fsb' or 'babsr', got {o['branching']!r}")
    if o["input_alpha_lookahead"] not in ("all", "two", "off"):
        raise InvalidArgumentError(f"verify_query: input_alpha_lookahead must be 'all', 'two' or 'off', "
                                   f"got {o['input_alpha_lookahead']!r}")
    w = o["input_alpha_weight"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or not math.isfinite(w):
        raise InvalidArgumentError(f"verify_query: input_alpha_weight must be a positive number, got {w!r}")
    if not (isinstance(o["fsb_k"], int) and o["fsb_k"] >= 1):
        raise InvalidArgumentError(f"verify_query: fsb_k must be a positive integer, got {o['fsb_k']!r}")
    if o["refine"] not in REFINE_MODES:
        raise InvalidArgumentError(f"verify_query: refine must be one of {', '.join(REFINE_MODES)}, got {o['refine']!r}")
    share = o["refine_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise InvalidArgumentError(f"verify_query: refine_share must be a number in [0, 1], got {share!r}")
    if not (isinstance(o["refine_batch"], int) and o["refine_batch"] >= 1):
        raise InvalidArgumentError(f"verify_query: refine_batch must be a positive integer, got {o['refine_batch']!r}")
    t0 = time.monotonic() if start is None else start
    deadline = t0 + timeout
    dev = net.device
    batch = SpecBatch.build(query.specs, device=dev)
    net64 = net if net.dtype == torch.float64 else net.to(dtype=torch.float64)
    seed = int(o["seed"])
    visited = 0

    sb = torch.full((batch.n_specs,), -math.inf, dtype=torch.float64)
    refine_log = []  # RefineStats of the refined boxes

    def done(status, reason="", hit=None, x=None, y=None):
        if refine_log and status != "sat":  # what the refinement did (relax/bab/refine.py RefineStats)
            reason = f"{reason} [{'; '.join(r.summary() for r in refine_log)}]"
        return Verdict(status, x, y, time.monotonic() - t0, visited, reason, hit, sb.clone())

    n_in = int(math.prod(net.input_shape))
    use_input = (n_in <= int(o["input_split_max"])) if o["input_split"] == "auto" else bool(o["input_split"])
    do_refine = o["bab"] and not use_input and float(share) > 0 and (
        o["refine"] == "bab" or (o["refine"] == "auto" and refine_applies(net)))
    restarts = o["pgd_restarts"]
    if restarts == "auto":  # random restarts are cheap and effective on low-dimensional inputs (ACAS Xu)
        # ReLU BaB: 10 per specification (pgd_search spreads its restarts over the group's specifications)
        restarts = 500 if use_input else 10 * max(batch.group_of.count(g) for g in set(batch.group_of))
    restarts_in = 2000 if o["pgd_restarts"] == "auto" else int(restarts)  # during input splitting
    every_in = 1.0 if o["attack_every"] == "auto" else float(o["attack_every"])
    if o["attack_every"] == "auto":
        o["attack_every"] = 5.0
    o["pgd_restarts"] = int(restarts)

    # 1. attack
    cand = pgd_search(net, batch, steps=int(o["pgd_steps"]), restarts=int(restarts), seed=seed,
                      dtype=o["dtype"], deadline=deadline)
    hit, x, y = check_counterexample(net64, batch, cand)
    if hit is not None:
        return done("sat", "pgd", hit[0], x, y)
    if time.monotonic() > deadline:
        return done("timeout", "time budget exhausted during the attack")

    dt = working_dtype(net, batch.C, o["dtype"])

    # 2. CROWN / alpha-CROWN per box; remember per-spec root domains for the search
    roots: dict[int, tuple] = {}  # spec -> (root key, builder)
    chain = AffineReluChain.from_network(net) if use_input and o["chain"] else None
    cdt = torch.float64 if dt == torch.float64 or net.dtype == torch.float64 else torch.float32
    groups_open: list[tuple[int, list[int]]] = []  # input splitting on a chain: (group, open specs)
    refuted = torch.zeros(batch.n_specs, dtype=torch.bool)
    how = {}
    for g in range(batch.lower.shape[0]):
        rows = (batch.owner[g] >= 0).nonzero().flatten()
        specs_g = sorted(set(batch.owner[g][rows].tolist()))
        lo64, hi64 = batch.lower[g], batch.upper[g]
        Cg, dg = batch.C[g][rows], batch.d[g][rows]
        own = batch.owner[g][rows]
        if use_input and chain is not None:
            # one batched CROWN over the box for every specification of the group (shared work)
            local = {i: k for k, i in enumerate(specs_g)}
            own_l = torch.tensor([local[int(i)] for i in own.tolist()], dtype=torch.long, device=dev)
            cs = ChainSplit(chain, net64, lo64, hi64, Cg, dg, own_l, dtype=cdt, deadline=deadline,
                            combo_iters=int(o["input_combo_iters"]))
            rk = cs.root_spec_keys()
            visited += 1
            for i in specs_g:
                sb[i] = float(rk[local[i]])
                if rk[local[i]] > 0:
                    refuted[i] = True
                    how[i] = "crown"
            open_g = [i for i in specs_g if not refuted[i]]
            if open_g:
                groups_open.append((g, open_g))
            continue
        if use_input:
            for i in specs_g:
                sel = own == i
                isp = InputSplit(net, lo64, hi64, Cg[sel], dg[sel], dt, net64=net64)
                r = isp.root()
                visited += 1
                sb[i] = r.key
                if r.key > 0:
                    refuted[i] = True
                    how[i] = "crown"
                else:
                    roots[i] = (r.key, ("input", isp, r))
            continue
        lo, hi = outward_box(lo64.unsqueeze(0), hi64.unsqueeze(0), dt)
        bc = BetaCrown(net, lo, hi, Cg, dg, dt, root_iters=int(o["alpha_iters"]), root_lr=float(o["alpha_lr"]))
        S0 = torch.zeros(1, bc.N, dtype=torch.int8, device=dev)
        B0 = torch.zeros(1, bc.m, bc.N, dtype=dt, device=dev)
        lower, a, b, sc = bc.bound(S0, bc.default_alpha().unsqueeze(0), B0, 0, 0.1, 0.0)  # CROWN

        def mark(lower, name):
            ok = (lower[0].double() > dg)
            for i in specs_g:
                if not refuted[i] and bool(ok[own == i].any()):
                    refuted[i] = True
                    how[i] = name

        mark(lower, "crown")
        if not bool(refuted[specs_g].all()) and int(o["alpha_iters"]) > 0 and time.monotonic() < deadline:
            lower2, a, b, sc = bc.bound(S0, a, B0, int(o["alpha_iters"]), float(o["alpha_lr"]), 0.0,
                                        deadline=deadline, owner=own)
            lower = torch.maximum(lower, lower2)
            mark(lower, "alpha-crown")
        if (not bool(refuted[specs_g].all()) and o["bab"] and int(o["interm_iters"]) > 0
                and time.monotonic() < deadline):
            # before the search: alpha-CROWN on the intermediate bounds, then alpha-CROWN on the rows again
            bc = BetaCrown(net, lo, hi, Cg, dg, dt, root_iters=int(o["alpha_iters"]), root_lr=float(o["alpha_lr"]),
                           pre=bc.pre0, interm_iters=int(o["interm_iters"]), interm_lr=float(o["interm_lr"]),
                           deadline=deadline)
            S0 = torch.zeros(1, bc.N, dtype=torch.int8, device=dev)
            B0 = torch.zeros(1, bc.m, bc.N, dtype=dt, device=dev)
            lower2, a, b, sc = bc.bound(S0, bc.default_alpha().unsqueeze(0), B0, int(o["alpha_iters"]),
                                        float(o["alpha_lr"]), 0.0, deadline=deadline, owner=own)
            lower = torch.maximum(lower, lower2)
            mark(lower, "alpha-crown")
            if do_refine and not bool(refuted[specs_g].all()) and time.monotonic() < deadline:
                # still open: per-neuron BaB on the intermediate bounds, layer by layer (relax/bab/refine.py),
                # ending early once CROWN on the rows proves every specification with the bounds so far
                def proved_with(pre, lo=lo, hi=hi, Cg=Cg, dg=dg, own=own):
                    b_ = BetaCrown(net, lo, hi, Cg, dg, dt, pre=pre)
                    l_, *_ = b_.bound(torch.zeros(1, b_.N, dtype=torch.int8, device=dev), b_.default_alpha().unsqueeze(0),
                                      torch.zeros(1, b_.m, b_.N, dtype=dt, device=dev), 0, 0.0, 0.0, owner=own)
                    ok = l_[0].double() > dg
                    return all(bool(ok[own == i].any()) or bool(refuted[i]) for i in specs_g)

                now = time.monotonic()
                pre_r, rst = refine_intermediate(bc, bc.pre0, deadline=now + float(share) * (deadline - now),
                                                 interm_iters=int(o["interm_iters"]), interm_lr=float(o["interm_lr"]),
                                                 iters=int(o["bab_iters"]), lr_alpha=float(o["lr_alpha"]),
                                                 lr_beta=float(o["lr_beta"]), batch=int(o["refine_batch"]), seed=seed,
                                                 stop=proved_with)
                refine_log.append(rst)
                bc = BetaCrown(net, lo, hi, Cg, dg, dt, root_iters=int(o["alpha_iters"]),
                               root_lr=float(o["alpha_lr"]), pre=pre_r)
                S0 = torch.zeros(1, bc.N, dtype=torch.int8, device=dev)
                B0 = torch.zeros(1, bc.m, bc.N, dtype=dt, device=dev)
                lower2, a, b, sc = bc.bound(S0, bc.default_alpha().unsqueeze(0), B0, int(o["alpha_iters"]),
                                            float(o["alpha_lr"]), 0.0, deadline=deadline, owner=own)
                lower = torch.maximum(lower, lower2)
                mark(lower, "refined alpha-crown")
        visited += 1
        for i in specs_g:
            sel = own == i
            key = float((lower[0][sel].double() - dg[sel]).amax())
            sb[i] = key
            if refuted[i]:
                continue
            roots[i] = (key, ("relu", bc, sel, lower[0][sel], a[0][sel]))
    if bool(refuted.all()):
        vals = set(how.values())
        return done("unsat", next((m for m in ("refined alpha-crown", "alpha-crown") if m in vals), "crown"))
    if time.monotonic() > deadline:
        return done("timeout", "time budget exhausted after alpha-crown")
    if not o["bab"]:
        return done("unknown", f"{int((~refuted).sum())} of {batch.n_specs} specifications not refuted by "
                               f"CROWN/alpha-CROWN and no counterexample found (branch-and-bound off)")

    # 3. branch-and-bound, easiest specification first
    order = sorted(roots, key=lambda i: -roots[i][0])
    attack_seed = [seed + 1]

    def attacker(specs_idx):
        sub = SpecBatch.build([query.specs[i] for i in specs_idx], device=dev)
        last = [time.monotonic() + every_in]  # the time of the next round

        def between(store):
            now = time.monotonic()
            if now < last[0] or now > deadline:
                return None
            attack_seed[0] += 1
            starts = None
            chunks = store.domains()
            if chunks:  # also from the centres of the worst open boxes
                w = min(chunks, key=lambda c: c.key)
                k = min(len(w), 64)
                idx = w.keys.topk(k, largest=False).indices
                ctr = ((w.lo[idx] + w.hi[idx]) / 2).reshape(1, k, *net.input_shape)
                starts = ctr.expand(sub.lower.shape[0], -1, *([-1] * len(net.input_shape)))
            c = pgd_search(net, sub, steps=int(o["pgd_steps"]), restarts=int(restarts_in), seed=attack_seed[0],
                           dtype=o["dtype"], deadline=deadline, starts=starts)
            h, xx, yy = check_counterexample(net64, sub, c)
            # the next round after every_in seconds, and attacks take at most ~1/6 of the time
            t1 = time.monotonic()
            last[0] = t1 + max(every_in, 5 * (t1 - now))
            return None if h is None else (xx, yy, h[0])  # h[0]: index in specs_idx
        return between

    # 3a. input splitting on an affine-ReLU chain: one search per box group, its open specifications together
    for g, open_g in sorted(groups_open, key=lambda t: -max(float(sb[i]) for i in t[1])):
        rows = (batch.owner[g] >= 0) & torch.isin(batch.owner[g], torch.tensor(open_g, device=dev))
        own = batch.owner[g][rows]
        local = {i: k for k, i in enumerate(open_g)}
        own_l = torch.tensor([local[int(i)] for i in own.tolist()], dtype=torch.long, device=dev)
        # a portfolio of three branchings, time-sliced (1 s each, doubling), each resumed from its own open boxes:
        # look-ahead (every coordinate tried where "sb" gains little), plain "sb", and "sb" share x relative
        # width (+ 0.1 relative width); measured on ACAS Xu, each wins on properties where the others stall
        # (P1/P10, P9, P3 on 5_1); any one's proof is a proof
        ai, ri = int(o["input_alpha_iters"]), int(o["input_refine_iters"])
        # the alpha member: look-ahead over every coordinate too ("all"; measured on ACAS Xu P2 3_3 / 4_2, whose
        # open boxes "sb" keeps halving along the steep X_1 while halving X_2 is what tightens the worse child:
        # proved alone in 36 s / 24 s at load ~4, where plain "sb" with alpha stalled at -0.002 after 110 s)
        alk = o["input_alpha_lookahead"]
        looks = ([("all", 0.0, 0), ("off", 0.0, 0), ("off", 0.1, 0)] + ([(alk, 0.0, ai)] if ai > 0 else [])
                 if o["input_lookahead"] == "portfolio" else [(alk, 0.0, max(ai, 1))] if o["input_lookahead"] == "alpha"
                 else [(o["input_lookahead"], 0.0, 0)])
        css = [ChainSplit(chain, net64, batch.lower[g], batch.upper[g], batch.C[g][rows], batch.d[g][rows], own_l,
                          dtype=cdt, deadline=deadline, chunk=int(o["batch"] or 256), lookahead=lk, width_mix=mx,
                          alpha_iters=a_, refine_iters=ri if a_ > 0 else 0, combo_iters=int(o["input_combo_iters"]))
               for lk, mx, a_ in looks]
        cs = css[0]
        root = cs.root()
        visited += 1
        if cs.witness is not None:
            s_, xx, yy = cs.witness
            return done("sat", "counterexample at the root box", open_g[s_], xx, yy)
        prog = None
        if o["progress"] is not None:
            prog = (lambda p, i=open_g[0]: o["progress"](i, p))
        opens = [[root] for _ in css]
        attack = attacker(open_g)
        slice_s = 1.0
        weight = float(o["input_alpha_weight"])
        outc = None
        while True:
            # after the first round the alpha member goes first (its slice is the longest: finishing it before the
            # others' measured 57 s instead of 81 s for ACAS Xu 3_3 P2); the first round keeps the cheap CROWN
            # members first, so that easy instances stay fast
            ks = list(range(len(css)))
            if slice_s > 1.0:
                ks = [k for k in ks if css[k].alpha_iters] + [k for k in ks if not css[k].alpha_iters]
            for k in ks:
                c_k = css[k]
                now = time.monotonic()
                if now > deadline:
                    break
                held = [None]

                def between(store, held=held):
                    held[0] = store
                    return attack(store)
                span = deadline - now if len(css) == 1 else min(slice_s * (weight if c_k.alpha_iters else 1), deadline - now)
                c_k.deadline = now + span
                outc = branch_and_bound(opens[k], c_k, c_k.bound, timeout=span, batch=4,
                                        memory_budget=float(o["memory_budget"]) / len(css),
                                        max_domains=o["max_domains"],
                                        progress=prog, between=between, start=now)
                if outc.status != "timeout":
                    break
                # resume later from the open boxes (ChainSplit never leaves domains in search.py's stuck list)
                opens[k] = held[0].domains() if held[0] is not None else opens[k]
            if outc.status != "timeout" or time.monotonic() > deadline:
                break
            slice_s *= 2
        visited += sum(c_k.boxes for c_k in css)
        for i in open_g:
            sb[i] = max(float(sb[i]), outc.best_bound)
        if outc.status == "witness":
            xx, yy, s_ = outc.witness
            return done("sat", "counterexample found during input-split branch-and-bound", open_g[s_], xx, yy)
        if outc.status == "proved":
            for i in open_g:
                refuted[i] = True
                how[i] = "bab-input"
            continue
        left = int((~refuted).sum())
        return done(outc.status, f"specifications {open_g}: {outc.reason} (certified lower bound of the margin "
                                 f"{outc.best_bound:.4g}); {left} of {batch.n_specs} specifications not proved")
    for i in order:
        kind = roots[i][1][0]
        g = batch.group_of[i]
        sub = SpecBatch.build([query.specs[i]], device=dev)
        last_attack = [time.monotonic()]

        def between(store, sub=sub, last=last_attack):
            now = time.monotonic()
            if now - last[0] < float(o["attack_every"]) or now > deadline:
                return None
            attack_seed[0] += 1
            c = pgd_search(net, sub, steps=int(o["pgd_steps"]), restarts=int(o["pgd_restarts"]),
                           seed=attack_seed[0], dtype=o["dtype"], deadline=deadline)
            h, xx, yy = check_counterexample(net64, sub, c)
            # the next round after attack_every seconds, and these attacks take at most ~1/10 of the search
            t1 = time.monotonic()
            last[0] = t1 + max(0.0, 9 * (t1 - now) - float(o["attack_every"]))
            return None if h is None else (xx, yy)

        prog = None
        if o["progress"] is not None:
            prog = (lambda p, i=i: o["progress"](i, p))
        if kind == "input":
            _, isp, root = roots[i][1]
            outc = branch_and_bound([root], InputSplitPolicy(isp, int(o["batch"] or 512)), box_bounder(isp),
                                    timeout=deadline - time.monotonic(), batch=int(o["batch"] or 512),
                                    memory_budget=float(o["memory_budget"]),
                                    max_domains=o["max_domains"], progress=prog, between=between)
        else:
            _, bc_g, sel, low, alpha = roots[i][1]
            bc = BetaCrown(net, bc_g.lo, bc_g.hi, batch.C[g][batch.owner[g] == i], batch.d[g][batch.owner[g] == i], dt,
                           iters=int(o["bab_iters"]), lr_alpha=float(o["lr_alpha"]), lr_beta=float(o["lr_beta"]),
                           pre=bc_g.pre0)
            S0 = torch.zeros(1, bc.N, dtype=torch.int8, device=dev)
            B0 = torch.zeros(1, bc.m, bc.N, dtype=dt, device=dev)
            l0, a0, b0, sc0 = bc.bound(S0, alpha.unsqueeze(0), B0, 0, 0.0, 0.0)
            l0 = torch.maximum(l0, low.unsqueeze(0).to(l0.dtype))
            fsb_k = int(o["fsb_k"]) if o["branching"] == "fsb" else 0
            root = bc.make_domains(S0, l0, a0, b0, sc0, [0], fsb_k=fsb_k)[0]
            policy = FSBPolicy(bc, fsb_k) if fsb_k > 0 else BaBSRPolicy()
            try:
                outc = branch_and_bound([root], policy, relu_bounder(bc, fsb_k), timeout=deadline - time.monotonic(),
                                        batch=int(o["batch"] or 64), memory_budget=float(o["memory_budget"]),
                                        max_domains=o["max_domains"], progress=prog, between=between)
            except (MemoryError, RuntimeError) as e:  # the allocator, not the domain budget, ran out
                if not isinstance(e, MemoryError) and "memory" not in str(e).lower():
                    raise
                return done("unknown", f"specification {i}: out of memory during branch-and-bound "
                                       f"({str(e).splitlines()[0][:120]}); lower the batch or memory_budget")
        visited += outc.visited
        sb[i] = max(float(sb[i]), outc.best_bound)
        if outc.status == "witness":
            xx, yy = outc.witness
            return done("sat", f"counterexample found during {kind}-split branch-and-bound", i, xx, yy)
        if outc.status == "proved":
            refuted[i] = True
            how[i] = f"bab-{kind}"
            continue
        left = int((~refuted).sum())
        return done(outc.status, f"specification {i}: {outc.reason} (certified lower bound of its margin "
                                 f"{outc.best_bound:.4g}); {left} of {batch.n_specs} specifications not proved")
    return done("unsat", "bab-input" if use_input else "beta-crown bab")
