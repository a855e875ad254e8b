#!/usr/bin/env python3
"""Generates Sources/SubqSparse/NeighborhoodTiles+Generated.swift.

Neighborhood attention puts consecutive queries of one grid row on the SIMD lanes and reads, for a
relative key offset o, the keys of the same lanes shifted by o: one unaligned vector load of the
transposed, padded key row gives every lane its own key. The tiles below keep R query vectors
(R grid rows that share a key row) by W consecutive offsets in registers, so each key load feeds R
FMAs and each query load feeds W. Swift cannot keep an array of SIMD values in registers, so every
(R, W) shape is written out: R in 1...3, W in 1...8 with R·W ≤ 21 (so R·W accumulators plus R
query and W key vectors fit AVX-512's 32 registers; the AVX2/NEON driver only uses R ≤ 2, W ≤ 4).
Every iteration of a tile's loop also prefetches one cache line into L2 from the list `pf` (one entry per
iteration): the caller queues the lines the next tile and the next band will read, so memory
requests are spread over the computation instead of issued in a burst. It also prefetches into L1
the same vectors of the next packed row (`next`, the call's next key row), which the packed-row cache
holds in L2. Run it after changing a tile;
the output is committed.
"""
import pathlib

ROWS = [1, 2, 3]
WIDTHS = [1, 2, 3, 4, 5, 6, 7, 8]


def fits(R, W):
    """Shapes whose accumulators, query and key vectors fit 32 vector registers."""
    return R * W <= 21 or (R == 1)


def qk(R, W, centred=False):
    """Scores of R query vectors against W shifted key vectors, `qk{R}x{W}`. With `centred`,
    `qkc{R}x{W}`: the same for the centred window (offsets −h … h, W = 2h + 1) when `k + h` is a
    whole, aligned vector: each channel loads the three aligned vectors around it and shifts them
    in registers (one two-source permute each, `vpermt2ps`) instead of loading W − 1 vectors that straddle two cache lines. On this
    machine a split load costs a load port about 2.5 times an aligned one, and a tile of 1 or 2 rows
    does too few FMAs per key load to hide that (the shifts take the FMA port 5, so 3-row tiles keep
    the split loads)."""
    h = (W - 1) // 2
    L = []
    if centred:
        L.append(f"  /// ``qk{R}x{W}`` with `k` at offset −{h} and `k + {h}` 64-byte aligned: three aligned loads and {W - 1} in-register")
        L.append("  /// shifts per channel instead of shifted loads that straddle two cache lines (AVX-512).")
    else:
        L.append(f"  /// Scores of {R} query vector(s) against {W} shifted key vector(s):")
        L.append("  /// `s_r[w] = Σ_d q_r[d] · K[d·ldk + w ..< d·ldk + w + laneWidth]`.")
    L.append("  @inline(__always)")
    params = ", ".join(f"_ q{r}: UnsafePointer<Lane>" for r in range(R))
    outs = ", ".join(f"_ s{r}: UnsafeMutablePointer<Lane>" for r in range(R))
    name = f"qkc{R}x{W}" if centred else f"qk{R}x{W}"
    L.append(f"  static func {name}({params}, k: UnsafePointer<Float>, ldk: Int, depth: Int, {outs}, pf: UnsafePointer<UnsafeRawPointer>, next: UnsafePointer<Float>) {{")
    for r in range(R):
        L.append("    " + "; ".join(f"var a{r}{w} = Lane()" for w in range(W)))
    L.append(f"    var kp = k + {h}, np = next" if centred else "    var kp = k, np = next")
    L.append("    for d in 0..<depth {")
    if centred:
        L.append("      let ka = subq_opaque16(loadLane(kp - laneWidth)), kb = subq_opaque16(loadLane(kp)), kc = subq_opaque16(loadLane(kp + laneWidth))")
        ks = []
        for w in range(W):
            o = w - h
            ks.append(f"let k{w} = " + ("kb" if o == 0 else f"subq_align16_{16 + o}(ka, kb)" if o < 0 else f"subq_align16_{o}(kb, kc)"))
        L.append("      " + "; ".join(ks))
    else:
        L.append("      " + "; ".join(f"let k{w} = loadLane(kp + {w})" for w in range(W)))
    for r in range(R):
        L.append(f"      do {{ let q = q{r}[d]; " + "; ".join(f"a{r}{w} = fmadd(a{r}{w}, q, k{w})" for w in range(W)) + " }")
    L.append("      prefetchL2(pf[d])")
    L.append(f"      prefetchRead(np); prefetchRead(np + 16); prefetchRead(np + {W + 14})")
    L.append("      kp += ldk; np += ldk")
    L.append("    }")
    for r in range(R):
        L.append("    " + "; ".join(f"s{r}[{w}] = a{r}{w}" for w in range(W)))
    L.append("  }")
    return L


CENTRED_ROWS = [1, 2]
CENTRED_WIDTHS = [3, 5, 7]


def has_centred_tile():
    L = []
    L.append("  /// Whether ``qkc(rows:width:q:qStride:k:ldk:depth:s:sStride:pf:next:)`` has a tile for `rows` × `width`.")
    L.append("  static func hasCentredTile(rows: Int, width: Int) -> Bool {")
    L.append("    " + "(" + " || ".join(f"rows == {R}" for R in CENTRED_ROWS) + ") && (" + " || ".join(f"width == {W}" for W in CENTRED_WIDTHS) + ")")
    L.append("  }")
    return L


def pv(R, W):
    L = []
    L.append(f"  /// Value update of {R} query vector(s) from {W} shifted value vector(s), for `c` in `0..<count`:")
    L.append("  /// `o_r[c] += Σ_w p_r[w] · V[c·ldv + w ..< c·ldv + w + laneWidth]`.")
    L.append("  @inline(__always)")
    params = ", ".join(f"_ p{r}: UnsafePointer<Lane>" for r in range(R))
    outs = ", ".join(f"_ o{r}: UnsafeMutablePointer<Lane>" for r in range(R))
    L.append(f"  static func pv{R}x{W}({params}, v: UnsafePointer<Float>, ldv: Int, count: Int, {outs}, pf: UnsafePointer<UnsafeRawPointer>, next: UnsafePointer<Float>) {{")
    for r in range(R):
        L.append("    " + "; ".join(f"let p{r}{w} = p{r}[{w}]" for w in range(W)))
    L.append("    var vp = v, np = next")
    L.append("    for c in 0..<count {")
    L.append("      " + "; ".join(f"let v{w} = loadLane(vp + {w})" for w in range(W)))
    for r in range(R):
        terms = f"o{r}[c]"
        expr = terms
        for w in range(W):
            expr = f"fmadd({expr}, p{r}{w}, v{w})"
        L.append(f"      o{r}[c] = {expr}")
    L.append("      prefetchL2(pf[c])")
    L.append(f"      prefetchRead(np); prefetchRead(np + 16); prefetchRead(np + {W + 14})")
    L.append("      vp += ldv; np += ldv")
    L.append("    }")
    L.append("  }")
    return L


NAT_QUERIES = [1, 2, 3, 4]
NAT_VECTORS = [1, 2, 3, 4]


def pvn(Q, NV):
    """Value update in the natural layout: Q consecutive queries of one lane vector (their
    probabilities are lanes of the score vectors) times V rows read as stored (`[key][Dv]`), NV
    lane vectors of channels, over `rows` key rows. Query t sees the key columns `a_t ..< e_t`
    (windows are monotone: a_t ≤ a_{t+1}, e_t ≤ e_{t+1}), so every key column is seen by a contiguous
    run of the Q queries; the loop walks the segments between the window bounds."""
    L = []
    L.append(f"  /// Natural-layout value update of {Q} quer{'y' if Q == 1 else 'ies'} × {NV} channel vector(s), over `rows` key rows:")
    L.append("  /// `o_t[c] += Σ_x Σ_{j ∈ a_t..<e_t} p[t·(1 − laneWidth) + x·pRow + j·pStep] · V[x·vRow + j·vCol + c·laneWidth ..< … + laneWidth]`")
    L.append("  /// (query t's probabilities are lane t of the score vectors, shifted by one vector per query: one")
    L.append("  /// pointer with constant offsets, where a pointer per query cost an add each per key row, 2–3%).")
    L.append("  /// Issues one L2 prefetch from `pf` per key column (index clamped to `pfLast`). With `direct`, the")
    L.append("  /// accumulators start at zero (not from `o_t`) and are stored times `s_t`: the final output")
    L.append("  /// when this call covers query t's whole window (one softmax chunk), written with non-temporal")
    L.append("  /// stores (`o_t` aligned to a lane vector; the caller fences).")
    L.append("  @inline(__always)")
    os_ = ", ".join(f"_ o{t}: UnsafeMutablePointer<Float>" for t in range(Q))
    bounds = ", ".join(f"a{t}: Int, e{t}: Int" for t in range(Q))
    L.append(f"  static func pvn{Q}x{NV}(_ p: UnsafePointer<Float>, pStep: Int, pRow: Int, v: UnsafePointer<Float>, vCol: Int, vRow: Int, rows: Int,")
    scales = ", ".join(f"s{t}: Float" for t in range(Q))
    L.append(f"                      {bounds}, {os_}, direct: Bool, {scales}, pf: UnsafePointer<UnsafeRawPointer>, pfLast: Int) {{")
    for t in range(Q):
        L.append("    " + "; ".join(f"var c{t}{c} = direct ? Lane() : loadLane(o{t} + {c} * laneWidth)" for c in range(NV)))
    if Q <= 2:
        # Segments: [a0, min(a1, e0)) query 0 only, [a1, e0) both, [max(a1, e0), e1) query 1 only.
        # Key columns outside, key rows inside (see below).
        segs = [("a0", "e0", [0])] if Q == 1 else [("a0", "min(a1, e0)", [0]), ("a1", "e0", [0, 1]), ("max(a1, e0)", "e1", [1])]
        L.append("    var k = 0")
        for (lo, hi, act) in segs:
            L.append("    do {")
            L.append(f"      var jj = {lo}")
            L.append(f"      let end = {hi}")
            L.append("      while jj < end {")
            L.append("        var vj = v + jj * vCol")
            L.append("        var pj = p + jj * pStep")
            L.append("        for _ in 0..<rows {")
            L.append("          " + "; ".join(f"let v{c} = loadLane(vj + {c} * laneWidth)" for c in range(NV)))
            for t in act:
                L.append(f"          do {{ let b = Lane(repeating: pj[{t} * (1 - laneWidth)]); " + "; ".join(f"c{t}{c} = fmadd(c{t}{c}, b, v{c})" for c in range(NV)) + " }")
            L.append("          vj += vRow; pj += pRow")
            L.append("        }")
            L.append("        prefetchL2(pf[k]); k = k < pfLast ? k + 1 : k")
            L.append("        jj += 1")
            L.append("      }")
            L.append("    }")
    elif Q >= 3:
        # Segments between consecutive window bounds; in each, queries lo...hi see the keys
        # (lo = windows already ended, hi = windows already started − 1). Each segment runs over
        # every key row with the same active queries.
        L.append("    var k = 0")
        L.append(f"    var j = a0")
        L.append(f"    let jEnd = e{Q-1}")
        L.append("    while j < jEnd {")
        L.append("      let lo = " + " + ".join(f"(e{t} <= j ? 1 : 0)" for t in range(Q - 1)))
        L.append("      let hi = " + " + ".join(f"(a{t} <= j ? 1 : 0)" for t in range(1, Q)))
        nxt = "jEnd"
        for t in range(1, Q):
            nxt = f"min({nxt}, a{t} > j ? a{t} : jEnd)"
        for t in range(Q - 1):
            nxt = f"min({nxt}, e{t} > j ? e{t} : jEnd)"
        L.append(f"      let next = {nxt}")
        L.append("      switch (lo, hi) {")
        for lo in range(Q):
            for hi in range(lo, Q):
                # Key columns outside, key rows inside: the inner trip count is the same (the
                # rows seen) in every segment, so its exit branch predicts well.
                L.append(f"      case ({lo}, {hi}):")
                L.append("        var jj = j")
                L.append("        while jj < next {")
                L.append("          var vj = v + jj * vCol")
                L.append("          var pj = p + jj * pStep")
                L.append("          for _ in 0..<rows {")
                L.append("            " + "; ".join(f"let v{c} = loadLane(vj + {c} * laneWidth)" for c in range(NV)))
                for t in range(lo, hi + 1):
                    L.append(f"            do {{ let b = Lane(repeating: pj[{t} * (1 - laneWidth)]); " + "; ".join(f"c{t}{c} = fmadd(c{t}{c}, b, v{c})" for c in range(NV)) + " }")
                L.append("            vj += vRow; pj += pRow")
                L.append("          }")
                L.append("          prefetchL2(pf[k]); k = k < pfLast ? k + 1 : k")
                L.append("          jj += 1")
                L.append("        }")
        L.append("      default: break  // no query sees these keys (windows apart)")
        L.append("      }")
        L.append("      j = next")
        L.append("    }")
    L.append("    if direct {")
    for t in range(Q):
        L.append(f"      do {{ let s = Lane(repeating: s{t}); " + "; ".join(f"streamLane(c{t}{c} * s, o{t} + {c} * laneWidth)" for c in range(NV)) + " }")
    L.append("    } else {")
    for t in range(Q):
        L.append("      " + "; ".join(f"storeLane(c{t}{c}, o{t} + {c} * laneWidth)" for c in range(NV)))
    L.append("    }")
    L.append("  }")
    return L


def pvn_dispatch():
    L = []
    L.append("  /// `pvn{queries}x{vectors}`: query t's probabilities at `p + t·(1 − laneWidth)` (indexed by absolute key column j")
    L.append("  /// and key row x as `[x·pRow + j·pStep]`), its key columns `a_t ..< e_t`, its outputs at `o + t·oStride`;")
    L.append("  /// with `direct`, query t's sums start at zero and are stored times `scale[t]`.")
    L.append("  @inline(__always)")
    L.append("  static func pvn(queries: Int, vectors: Int, p: UnsafePointer<Float>, pStep: Int, pRow: Int,")
    L.append("                  v: UnsafePointer<Float>, vCol: Int, vRow: Int, rows: Int, a0: Int, e0: Int, a1: Int, e1: Int,")
    L.append("                  a2: Int, e2: Int, a3: Int, e3: Int,")
    L.append("                  o: UnsafeMutablePointer<Float>, oStride: Int, direct: Bool, scale: UnsafePointer<Float>,")
    L.append("                  pf: UnsafePointer<UnsafeRawPointer>, pfLast: Int) {")
    L.append("    switch (queries, vectors) {")
    for Q in NAT_QUERIES:
        for NV in NAT_VECTORS:
            oo = ", ".join(f"o + {t} * oStride" for t in range(Q))
            bb = ", ".join(f"a{t}: a{t}, e{t}: e{t}" for t in range(Q))
            sc = ", ".join(f"s{t}: scale[{t}]" for t in range(Q))
            L.append(f"    case ({Q}, {NV}): pvn{Q}x{NV}(p, pStep: pStep, pRow: pRow, v: v, vCol: vCol, vRow: vRow, rows: rows, {bb}, {oo},")
            L.append(f"                      direct: direct, {sc}, pf: pf, pfLast: pfLast)")
    L.append("    default: preconditionFailure(\"no natural neighborhood tile \\(queries)x\\(vectors)\")")
    L.append("    }")
    L.append("  }")
    return L


SLIDE_WIDTHS = list(range(2, 14))


def slide_vectors(K):
    """Channel vectors per pass of `pvs{K}x…`: 1 and 2 for every width, and 4 up to width 7
    (see NeighborhoodPlan.slideVectors)."""
    return [1, 2, 4] if K <= 7 else [1, 2]


def pvs(K, NV):
    """Sliding value step for one query row of a strip: `count` consecutive queries whose windows
    along the lanes axis are all `K` key columns at the same offset (query n sees columns
    n ..< n + K of the call's column origin). One pass over the columns keeps K queries' sums in
    registers, K × NV vectors, in slots n mod K: at column m query m enters (its slot is zeroed)
    and query m − K + 1 leaves (its slot is scaled and stored), so every FMA is a pair some query
    attends, with no per-query window bookkeeping. The slots of queries outside 0 ..< count (the
    first and last K − 1 columns) are computed and dropped."""
    L = []
    L.append(f"  /// Sliding value step, windows of {K} key columns, {NV} channel vector(s): for n < `count`,")
    L.append("  /// `o[n·oStep + c·laneWidth ..< …] = scale[n] · Σ_x Σ_{g<K} p[x·xs + g·slideStride + n] · V[x·vRow + (n + g)·vCol + c·laneWidth ..< …]`")
    L.append("  /// (probabilities `[x][g][n]`, g the offset in the window; the row of p at n − K + 1 … n + K − 1")
    L.append("  /// must be readable). Stores with non-temporal stores (`o` aligned to a lane vector; the caller")
    L.append("  /// fences). See ``NeighborhoodPlan`` for when the kernel takes this path.")
    L.append("  @inline(__always)")
    L.append(f"  static func pvs{K}x{NV}(_ p: UnsafePointer<Float>, xs: Int, v: UnsafePointer<Float>, vCol: Int, vRow: Int,")
    L.append("                     rows: Int, count: Int, _ o: UnsafeMutablePointer<Float>, oStep: Int, scale: UnsafePointer<Float>) {")
    L.append("    // Slot s holds the query that entered at the last column ≡ s (mod K); at column m its offset in")
    L.append("    // the window is g = (m − s) mod K, at p[m + x·xs + g·(slideStride − 1)] (constant offsets).")
    L.append("    let q1 = slideStride - 1")
    for s_ in range(K):
        L.append("    " + "; ".join(f"var a{s_}{c} = Lane()" for c in range(NV)))
    L.append(f"    let columns = count + {K - 1}")
    L.append("    var m0 = 0")
    L.append("    columns: while m0 < columns {")
    for u in range(K):
        L.append(f"      do {{")
        L.append(f"        let m = m0 + {u}")
        L.append("        if m >= columns { break columns }")
        L.append("        " + "; ".join(f"a{u}{c} = Lane()" for c in range(NV)))
        L.append("        var vj = v + m * vCol")
        L.append("        var pj = p + m")
        L.append("        for _ in 0..<rows {")
        L.append("          " + "; ".join(f"let v{c} = loadLane(vj + {c} * laneWidth)" for c in range(NV)))
        for s_ in range(K):
            g = (u - s_) % K
            off = "0" if g == 0 else ("q1" if g == 1 else f"{g} * q1")
            L.append(f"          do {{ let b = Lane(repeating: pj[{off}]); " + "; ".join(f"a{s_}{c} = fmadd(a{s_}{c}, b, v{c})" for c in range(NV)) + " }")
        L.append("          vj += vRow; pj += xs")
        L.append("        }")
        out_slot = (u + 1) % K
        L.append(f"        let n = m - {K - 1}")
        L.append("        if n >= 0 {")
        L.append("          let s = Lane(repeating: scale[n]), on = o + n * oStep")
        L.append("          " + "; ".join(f"streamLane(a{out_slot}{c} * s, on + {c} * laneWidth)" for c in range(NV)))
        L.append("        }")
        L.append("      }")
    L.append(f"      m0 += {K}")
    L.append("    }")
    L.append("  }")
    return L


def pvs_dispatch():
    L = []
    L.append("  /// Whether ``pvs(width:vectors:_:xs:v:vCol:vRow:rows:count:_:oStep:scale:)`` has a tile for windows of")
    L.append("  /// `width` key columns.")
    L.append("  static func hasSlidingTile(width: Int) -> Bool {")
    L.append(f"    width >= {SLIDE_WIDTHS[0]} && width <= {SLIDE_WIDTHS[-1]}")
    L.append("  }")
    L.append("")
    L.append("  /// Floats between the offsets of the sliding step's probabilities: a strip's query columns")
    L.append("  /// (at most 128 with a sliding tile, see ``NeighborhoodAttention/stripWidth(lastAxis:)``) and a")
    L.append("  /// margin of 16 either side. A constant, so that the K offsets are constant displacements of")
    L.append("  /// one pointer (as a variable, the compiler chained an add per offset and spilled).")
    L.append("  static let slideStride = 160")
    L.append("")
    L.append("  /// `pvs{width}x{vectors}`.")
    L.append("  @inline(__always)")
    L.append("  static func pvs(width: Int, vectors: Int, _ p: UnsafePointer<Float>, xs: Int, v: UnsafePointer<Float>,")
    L.append("                  vCol: Int, vRow: Int, rows: Int, count: Int, _ o: UnsafeMutablePointer<Float>, oStep: Int,")
    L.append("                  scale: UnsafePointer<Float>) {")
    L.append("    switch (width, vectors) {")
    for K in SLIDE_WIDTHS:
        for NV in slide_vectors(K):
            L.append(f"    case ({K}, {NV}): pvs{K}x{NV}(p, xs: xs, v: v, vCol: vCol, vRow: vRow, rows: rows, count: count, o,")
            L.append("                           oStep: oStep, scale: scale)")
    L.append("    default: preconditionFailure(\"no sliding neighborhood tile \\(width)x\\(vectors)\")")
    L.append("    }")
    L.append("  }")
    return L


def dispatch(kind):
    """The switch over the generated tiles of `kind`: "qk", "qkc" (centred score tiles) or "pv"."""
    L = []
    if kind in ("qk", "qkc"):
        pad = " " * len(kind)
        L.append(f"  /// `{kind}{{rows}}x{{width}}` with the query vectors at `q + r·qStride` and the scores at `s + r·sStride`.")
        if kind == "qk":
            L.append("  /// `centred`: the call's offsets are −h … h (width 2h + 1) and `k + h` is a whole vector; on AVX-512")
            L.append("  /// the 1- and 2-row shapes then go to ``qkc(rows:width:q:qStride:k:ldk:depth:s:sStride:pf:next:)``")
            L.append("  /// (same scores, no split loads).")
            L.append("  /// Not inlined: inlined into the tile loop, every shape's pointers were set up for each key")
            L.append("  /// row (about 280 instructions) and the loop's registers spilled; a call per key row and score")
            L.append("  /// chunk costs less (about 3% faster in alternated runs).")
            L.append("  @inline(never)")
        else:
            L.append("  @inline(__always)")
        L.append(f"  static func {kind}(rows: Int, width: Int, q: UnsafePointer<Lane>, qStride: Int, k: UnsafePointer<Float>, ldk: Int,")
        L.append(f"               {pad}depth: Int, s: UnsafeMutablePointer<Lane>, sStride: Int, pf: UnsafePointer<UnsafeRawPointer>,")
        L.append(f"               {pad}next: UnsafePointer<Float>{', centred: Bool' if kind == 'qk' else ''}) {{")
        if kind == "qk":
            L.append("    #if SUBQ_AVX512")
            L.append("    if centred && hasCentredTile(rows: rows, width: width) {")
            L.append("      qkc(rows: rows, width: width, q: q, qStride: qStride, k: k, ldk: ldk, depth: depth, s: s, sStride: sStride, pf: pf, next: next)")
            L.append("      return")
            L.append("    }")
            L.append("    #endif")
    else:
        L.append("  /// `pv{rows}x{width}` with the probabilities at `p + r·pStride` and the outputs at `o + r·oStride`.")
        L.append("  @inline(__always)")
        L.append("  static func pv(rows: Int, width: Int, p: UnsafePointer<Lane>, pStride: Int, v: UnsafePointer<Float>, ldv: Int,")
        L.append("                 count: Int, o: UnsafeMutablePointer<Lane>, oStride: Int, pf: UnsafePointer<UnsafeRawPointer>,")
        L.append("                 next: UnsafePointer<Float>) {")
    L.append("    switch (rows, width) {")
    shapes = [(R, W) for R in CENTRED_ROWS for W in CENTRED_WIDTHS] if kind == "qkc" \
        else [(R, W) for R in ROWS for W in WIDTHS if fits(R, W)]
    for R, W in shapes:
        if kind != "pv":
            qs = ", ".join(f"q + {r} * qStride" for r in range(R))
            ss = ", ".join(f"s + {r} * sStride" for r in range(R))
            L.append(f"    case ({R}, {W}): {kind}{R}x{W}({qs}, k: k, ldk: ldk, depth: depth, {ss}, pf: pf, next: next)")
        else:
            ps = ", ".join(f"p + {r} * pStride" for r in range(R))
            os_ = ", ".join(f"o + {r} * oStride" for r in range(R))
            L.append(f"    case ({R}, {W}): pv{R}x{W}({ps}, v: v, ldv: ldv, count: count, {os_}, pf: pf, next: next)")
    L.append("    default: preconditionFailure(\"no neighborhood tile \\(rows)x\\(width)\")")
    L.append("    }")
    L.append("  }")
    return L


def main():
    out = ["// Generated by scripts/gen-neighborhood-tiles.py; do not edit by hand.", "", "import SubqCShims", "import SubqKernels", "",
           "extension NeighborhoodTiles {"]
    for R in ROWS:
        for W in WIDTHS:
            if not fits(R, W):
                continue
            out += qk(R, W)
            out.append("")
            out += pv(R, W)
            out.append("")
    out += dispatch("qk")
    out.append("")
    out += dispatch("pv")
    out.append("")
    for Q in NAT_QUERIES:
        for NV in NAT_VECTORS:
            out += pvn(Q, NV)
            out.append("")
    out += pvn_dispatch()
    out.append("")
    for K in SLIDE_WIDTHS:
        for NV in slide_vectors(K):
            out += pvs(K, NV)
            out.append("")
    out += pvs_dispatch()
    out.append("}")
    out.append("")
    out.append("#if SUBQ_AVX512")
    out.append("extension NeighborhoodTiles {")
    for R in CENTRED_ROWS:
        for W in CENTRED_WIDTHS:
            out += qk(R, W, centred=True)
            out.append("")
    out += has_centred_tile()
    out.append("")
    out += dispatch("qkc")
    out.append("}")
    out.append("#endif")
    path = pathlib.Path(__file__).resolve().parent.parent / "Sources/SubqSparse/NeighborhoodTiles+Generated.swift"
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
