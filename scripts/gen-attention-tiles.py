#!/usr/bin/env python3
"""Generates Sources/SubqKernels/AttentionTiles+Generated.swift.

The register-blocked attention tiles need one Swift variable per accumulator (Swift has no way to
keep an array of SIMD values in registers), so they are written out here for the two shapes the
package uses: 6 rows x 4 lanes-vectors (AVX-512, 24 zmm accumulators) and 6 rows x 2 vectors
(AVX2 / NEON, 12 accumulators). Run it after changing a tile; the output is committed.
"""
import pathlib

MR = 6

def acc(r, v):
    return f"a{r}{v}"

def qk(nv):
    L = []
    L.append(f"  /// Scores tile, transposed: `st[r·stStride + v] = Σ_d k_r[d] · qt[d·qtStride + v]` for the")
    L.append(f"  /// {MR} key rows `r` and the {nv} lane vectors `v` of one query tile; when `updateMax` is set the")
    L.append(f"  /// running per-query maximum `rowMax[v]` also takes these rows into account.")
    L.append("  @inlinable @inline(__always)")
    L.append(f"  package static func qkTile{nv}(")
    L.append("    _ k0: UnsafePointer<Float>, _ k1: UnsafePointer<Float>, _ k2: UnsafePointer<Float>,")
    L.append("    _ k3: UnsafePointer<Float>, _ k4: UnsafePointer<Float>, _ k5: UnsafePointer<Float>,")
    L.append("    depth: Int, qt: UnsafePointer<Lane>, qtStride: Int,")
    L.append("    st: UnsafeMutablePointer<Lane>, stStride: Int, rowMax: UnsafeMutablePointer<Lane>, updateMax: Bool")
    L.append("  ) {")
    for r in range(MR):
        L.append("    " + "; ".join(f"var {acc(r,v)} = Lane()" for v in range(nv)))
    L.append("    var q = qt")
    L.append("    for d in 0..<depth {")
    L.append("      " + "; ".join(f"let q{v} = q[{v}]" for v in range(nv)))
    for r in range(MR):
        L.append(f"      do {{ let b = Lane(repeating: k{r}[d])")
        L.append("        " + "; ".join(f"{acc(r,v)} = fmadd({acc(r,v)}, b, q{v})" for v in range(nv)) + " }")
    L.append("      q += qtStride")
    L.append("    }")
    for r in range(MR):
        L.append("    " + "; ".join(f"st[{r}*stStride + {v}] = {acc(r,v)}" for v in range(nv)))
    L.append("    if updateMax {")
    for v in range(nv):
        terms = [acc(r, v) for r in range(MR)]
        L.append(f"      rowMax[{v}] = vmax(vmax(vmax(rowMax[{v}], {terms[0]}), vmax({terms[1]}, {terms[2]})), vmax(vmax({terms[3]}, {terms[4]}), {terms[5]}))")
    L.append("    }")
    L.append("  }")
    return L

def qkexp(nv):
    L = []
    L.append(f"  /// Scores tile with the softmax numerator fused in: computes the {MR}×{nv}-vector tile of Sᵀ as")
    L.append(f"  /// `qkTile{nv}` does, then, if no score exceeds `shift[v] + headroom`, stores `exp2(s − shift[v])`")
    L.append("  /// into `st`, adds the rows into `sum[v]` and returns true. Otherwise it stores the raw scores,")
    L.append("  /// writes the tile's per-lane maximum into `tileMax[v]` and returns false, so the caller can raise")
    L.append("  /// the shift first (lazy rescaling: the shift only moves when scores outgrow it by `headroom`).")
    L.append("  @inlinable @inline(__always)")
    L.append(f"  package static func qkExpTile{nv}(")
    L.append("    _ k0: UnsafePointer<Float>, _ k1: UnsafePointer<Float>, _ k2: UnsafePointer<Float>,")
    L.append("    _ k3: UnsafePointer<Float>, _ k4: UnsafePointer<Float>, _ k5: UnsafePointer<Float>,")
    L.append("    depth: Int, qt: UnsafePointer<Lane>, qtStride: Int,")
    L.append("    st: UnsafeMutablePointer<Lane>, stStride: Int, shift: UnsafePointer<Lane>, headroom: Float,")
    L.append("    sum: UnsafeMutablePointer<Lane>, tileMax: UnsafeMutablePointer<Lane>")
    L.append("  ) -> Bool {")
    for r in range(MR):
        L.append("    " + "; ".join(f"var {acc(r,v)} = Lane()" for v in range(nv)))
    L.append("    var q = qt")
    L.append("    for d in 0..<depth {")
    L.append("      " + "; ".join(f"let q{v} = q[{v}]" for v in range(nv)))
    for r in range(MR):
        L.append(f"      do {{ let b = Lane(repeating: k{r}[d])")
        L.append("        " + "; ".join(f"{acc(r,v)} = fmadd({acc(r,v)}, b, q{v})" for v in range(nv)) + " }")
    L.append("      q += qtStride")
    L.append("    }")
    L.append("    let h = Lane(repeating: headroom)")
    for v in range(nv):
        terms = [acc(r, v) for r in range(MR)]
        L.append(f"    let m{v} = vmax(vmax(vmax({terms[0]}, {terms[1]}), vmax({terms[2]}, {terms[3]})), vmax({terms[4]}, {terms[5]}))")
        L.append(f"    let s{v} = shift[{v}]")
    # One test for the whole tile: how far the scores exceed shift + headroom, lane-wise max.
    over = " , ".join(f"m{v} - s{v}" for v in range(nv))
    def tree(xs):
        while len(xs) > 1:
            xs = [f"vmax({xs[i]}, {xs[i+1]})" if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
        return xs[0]
    L.append(f"    let excess = {tree([f'm{v} - s{v}' for v in range(nv)])}")
    L.append("    // NaN scores compare false and pass through to the numerators; −∞ shifts give +∞ excess.")
    L.append("    if anyGreater(excess, h) {")
    for r in range(MR):
        L.append("      " + "; ".join(f"st[{r}*stStride + {v}] = {acc(r,v)}" for v in range(nv)))
    L.append("      " + "; ".join(f"tileMax[{v}] = m{v}" for v in range(nv)))
    L.append("      return false")
    L.append("    }")
    for v in range(nv):
        L.append(f"    do {{")
        for r in range(MR):
            L.append(f"      let e{r} = exp2Lane({acc(r,v)} - s{v}); st[{r}*stStride + {v}] = e{r}")
        L.append(f"      sum[{v}] += ((e0 + e1) + (e2 + e3)) + (e4 + e5)")
        L.append(f"    }}")
    L.append("    return true")
    L.append("  }")
    return L

def pv(nv):
    L = []
    L.append(f"  /// Output tile, transposed: for the {MR} value columns `c_r` and {nv} query lane vectors `v`,")
    L.append("  /// `ot[r·otStride + v] = alpha[v] · ot[r·otStride + v] + Σ_{j<count} vRows[j·ldv + c_r] · p[j·pStride + v]`.")
    L.append("  @inlinable @inline(__always)")
    L.append(f"  package static func pvTile{nv}(")
    L.append("    _ vRows: UnsafePointer<Float>, ldv: Int, _ c0: Int, _ c1: Int, _ c2: Int, _ c3: Int, _ c4: Int, _ c5: Int,")
    L.append("    count: Int, p: UnsafePointer<Lane>, pStride: Int,")
    L.append("    ot: UnsafeMutablePointer<Lane>, otStride: Int, alpha: UnsafePointer<Lane>")
    L.append("  ) {")
    L.append("    " + "; ".join(f"let al{v} = alpha[{v}]" for v in range(nv)))
    for r in range(MR):
        L.append("    " + "; ".join(f"var {acc(r,v)} = ot[{r}*otStride + {v}] * al{v}" for v in range(nv)))
    L.append("    var pp = p")
    L.append("    var vr = vRows")
    L.append("    for _ in 0..<count {")
    L.append("      " + "; ".join(f"let p{v} = pp[{v}]" for v in range(nv)))
    for r in range(MR):
        L.append(f"      do {{ let b = Lane(repeating: vr[c{r}])")
        L.append("        " + "; ".join(f"{acc(r,v)} = fmadd({acc(r,v)}, b, p{v})" for v in range(nv)) + " }")
    L.append("      pp += pStride")
    L.append("      vr += ldv")
    L.append("    }")
    for r in range(MR):
        L.append("    " + "; ".join(f"ot[{r}*otStride + {v}] = {acc(r,v)}" for v in range(nv)))
    L.append("  }")
    return L

out = ["// Generated by scripts/gen-attention-tiles.py; do not edit by hand.", "",
       "extension AttentionTiles {"]
for nv in (4, 2):
    out += qk(nv) + [""] + qkexp(nv) + [""] + pv(nv) + [""]
out[-1:] = ["}", ""]
path = pathlib.Path(__file__).resolve().parent.parent / "Sources/SubqKernels/AttentionTiles+Generated.swift"
path.write_text("\n".join(out))
print("wrote", path)
