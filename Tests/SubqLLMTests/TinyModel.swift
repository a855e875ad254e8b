import Foundation
import Subquadratic
import SubqTestSupport

/// GPT-2's byte ↔ printable-character table, written out here independently of the library.
func gpt2ByteChars() -> [String] {
  var bs: [Int] = Array(33...126) + Array(161...172) + Array(174...255)
  var cs = bs
  var n = 0
  for b in 0..<256 where !bs.contains(b) {
    bs.append(b)
    cs.append(256 + n)
    n += 1
  }
  var out = [String](repeating: "", count: 256)
  for (b, c) in zip(bs, cs) { out[b] = String(Character(Unicode.Scalar(UInt32(c))!)) }
  return out
}

/// The vocabulary of the tiny test model: 3 control tokens, the 256 byte symbols, and the tokens
/// made by `tinyMerges`.
let tinyMerges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "in g", "Ġ s", "o n", "Ġ w", "a n", "r e", "l o", "lo w", "Ġ 1", "Ġ Ġ"]

func tinyVocabulary() -> (tokens: [String], types: [Int]) {
  var toks = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  var types = [3, 3, 3]
  for c in gpt2ByteChars() { toks.append(c); types.append(1) }
  for m in tinyMerges {
    let parts = m.split(separator: " ")
    toks.append(String(parts[0]) + String(parts[1]))
    types.append(1)
  }
  return (toks, types)
}

/// A small random LLaMA model written to GGUF, and its weights dequantized to Double (from the
/// written bytes) for the reference forward pass.
struct TinyModel {
  var layers = 2
  var dim = 96
  var heads = 6
  var kvHeads = 2
  var ffn = 160
  var context = 512
  var theta = 10_000.0
  var eps: Float = 1e-5
  var tied = false
  /// Tensors left out of the file (for error tests).
  var omit: Set<String> = []
  /// Matrix types per layer (q, k, v, o, gate, up, down) and for the embedding/output.
  var matrixTypes: [UInt32] = [3, 8, 2, 1, 3, 8, 2]
  var embeddingType: UInt32 = 8
  var outputType: UInt32 = 0
  var headDim: Int { dim / heads }
  var vocab: Int { tinyVocabulary().tokens.count }

  /// Reference weights: name → (rows, cols, row-major Double values).
  var weights: [String: [Double]] = [:]

  /// Writes the GGUF file and records the weights it holds.
  mutating func write(to url: URL, seed: UInt64) throws {
    var rng = SeededGenerator(seed: seed)
    var w = GGUFWriter()
    let (tokens, types) = tinyVocabulary()
    w.set("general.architecture", .string("llama"))
    w.set("general.name", .string("tiny test model"))
    w.set("llama.block_count", .u32(UInt32(layers)))
    w.set("llama.context_length", .u32(UInt32(context)))
    w.set("llama.embedding_length", .u32(UInt32(dim)))
    w.set("llama.feed_forward_length", .u32(UInt32(ffn)))
    w.set("llama.attention.head_count", .u32(UInt32(heads)))
    w.set("llama.attention.head_count_kv", .u32(UInt32(kvHeads)))
    w.set("llama.rope.freq_base", .f32(Float(theta)))
    w.set("llama.attention.layer_norm_rms_epsilon", .f32(eps))
    w.set("llama.rope.dimension_count", .u32(UInt32(headDim)))
    w.set("llama.vocab_size", .u32(UInt32(vocab)))
    w.set("tokenizer.ggml.model", .string("gpt2"))
    w.set("tokenizer.ggml.pre", .string("smollm"))
    w.set("tokenizer.ggml.tokens", .array(8, tokens.map { .string($0) }))
    w.set("tokenizer.ggml.token_type", .array(5, types.map { .i32(Int32($0)) }))
    w.set("tokenizer.ggml.merges", .array(8, tinyMerges.map { .string($0) }))
    w.set("tokenizer.ggml.bos_token_id", .u32(0))
    w.set("tokenizer.ggml.eos_token_id", .u32(0))
    w.set("tokenizer.ggml.add_bos_token", .bool(false))

    func matrix(_ name: String, rows: Int, cols: Int, type: UInt32, scale: Double) {
      let x = (0..<(rows * cols)).map { _ in Float(rng.nextNormal() * scale) }
      let bytes = encodeTensor(x, type: type)
      if !omit.contains(name) { w.add(name, dims: [cols, rows], type: type, data: bytes) }
      weights[name] = referenceDequantize(type: type, bytes: bytes, count: rows * cols)
    }
    func norm(_ name: String) {
      let x = (0..<dim).map { _ in Float(1 + 0.2 * rng.nextNormal()) }
      w.add(name, dims: [dim], type: 0, data: f32Bytes(x))
      weights[name] = x.map(Double.init)
    }
    let qd = heads * headDim, kvd = kvHeads * headDim
    matrix("token_embd.weight", rows: vocab, cols: dim, type: embeddingType, scale: 1)
    for l in 0..<layers {
      let p = "blk.\(l)."
      norm(p + "attn_norm.weight")
      matrix(p + "attn_q.weight", rows: qd, cols: dim, type: matrixTypes[0], scale: 0.3)
      matrix(p + "attn_k.weight", rows: kvd, cols: dim, type: matrixTypes[1], scale: 0.3)
      matrix(p + "attn_v.weight", rows: kvd, cols: dim, type: matrixTypes[2], scale: 0.3)
      matrix(p + "attn_output.weight", rows: dim, cols: qd, type: matrixTypes[3], scale: 0.1)
      norm(p + "ffn_norm.weight")
      matrix(p + "ffn_gate.weight", rows: ffn, cols: dim, type: matrixTypes[4], scale: 0.2)
      matrix(p + "ffn_up.weight", rows: ffn, cols: dim, type: matrixTypes[5], scale: 0.2)
      matrix(p + "ffn_down.weight", rows: dim, cols: ffn, type: matrixTypes[6], scale: 0.1)
    }
    norm("output_norm.weight")
    if !tied { matrix("output.weight", rows: vocab, cols: dim, type: outputType, scale: 0.2) }
    try w.write(to: url)
  }

  /// Logits `[n][vocab]` of every position, computed in Float64 from the recorded weights.
  /// With `halfKV`, keys (after RoPE) and values are rounded to Float16 as a Float16 cache stores them.
  /// Logits of every position in Float64. `visibleKeys(i)` lists the positions query i attends to
  /// (default: causal, `0...i`), for methods that attend to a pattern of keys.
  func referenceLogits(_ tokens: [Int], halfKV: Bool = false, visibleKeys: ((Int) -> [Int])? = nil) -> [[Double]] {
    let n = tokens.count, D = headDim, G = heads / kvHeads
    func mat(_ name: String, _ x: [Double], rows: Int, cols: Int) -> [Double] {
      let W = weights[name]!
      return (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + W[r * cols + $1] * x[$1] } }
    }
    func rms(_ x: [Double], _ name: String) -> [Double] {
      let w = weights[name]!
      let ms = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
      let inv = 1 / (ms + Double(eps)).squareRoot()
      return x.enumerated().map { $0.element * inv * w[$0.offset] }
    }
    func rope(_ v: inout [Double], heads h: Int, pos: Int) {
      for hh in 0..<h {
        for i in 0..<(D / 2) {
          let a = Double(pos) * pow(theta, -2 * Double(i) / Double(D))
          let x0 = v[hh * D + 2 * i], x1 = v[hh * D + 2 * i + 1]
          v[hh * D + 2 * i] = x0 * cos(a) - x1 * sin(a)
          v[hh * D + 2 * i + 1] = x0 * sin(a) + x1 * cos(a)
        }
      }
    }
    let E = weights["token_embd.weight"]!
    var x = tokens.map { t in Array(E[(t * dim)..<((t + 1) * dim)]) }
    for l in 0..<layers {
      let p = "blk.\(l)."
      var qs: [[Double]] = [], ks: [[Double]] = [], vs: [[Double]] = []
      for i in 0..<n {
        let h = rms(x[i], p + "attn_norm.weight")
        var q = mat(p + "attn_q.weight", h, rows: heads * D, cols: dim)
        var k = mat(p + "attn_k.weight", h, rows: kvHeads * D, cols: dim)
        rope(&q, heads: heads, pos: i)
        rope(&k, heads: kvHeads, pos: i)
        let v = mat(p + "attn_v.weight", h, rows: kvHeads * D, cols: dim)
        qs.append(q)
        ks.append(halfKV ? k.map { Double(Float16(Float($0))) } : k)
        vs.append(halfKV ? v.map { Double(Float16(Float($0))) } : v)
      }
      for i in 0..<n {
        var att = [Double](repeating: 0, count: heads * D)
        for hh in 0..<heads {
          let g = hh / G
          let visible = visibleKeys?(i) ?? Array(0...i)
          let s = visible.map { j in (0..<D).reduce(0.0) { $0 + qs[i][hh * D + $1] * ks[j][g * D + $1] } / Double(D).squareRoot() }
          let m = s.max()!
          let e = s.map { exp($0 - m) }
          let z = e.reduce(0, +)
          for (jj, j) in visible.enumerated() { for c in 0..<D { att[hh * D + c] += e[jj] / z * vs[j][g * D + c] } }
        }
        let o = mat(p + "attn_output.weight", att, rows: dim, cols: heads * D)
        for c in 0..<dim { x[i][c] += o[c] }
        let h = rms(x[i], p + "ffn_norm.weight")
        let gt = mat(p + "ffn_gate.weight", h, rows: ffn, cols: dim)
        let up = mat(p + "ffn_up.weight", h, rows: ffn, cols: dim)
        let a = (0..<ffn).map { gt[$0] / (1 + exp(-gt[$0])) * up[$0] }
        let d = mat(p + "ffn_down.weight", a, rows: dim, cols: ffn)
        for c in 0..<dim { x[i][c] += d[c] }
      }
    }
    let out = tied ? "token_embd.weight" : "output.weight"
    return x.map { mat(out, rms($0, "output_norm.weight"), rows: vocab, cols: dim) }
  }
}

/// Relative Frobenius error of Float rows against Double rows.
func relativeError(_ a: [[Float]], _ b: [[Double]]) -> Double {
  var num = 0.0, den = 0.0
  for (x, y) in zip(a, b) {
    for (u, v) in zip(x, y) {
      num += (Double(u) - v) * (Double(u) - v)
      den += v * v
    }
  }
  return (num / den).squareRoot()
}

/// A fresh tiny model file; the caller removes the directory.
/// `n` token ids drawn uniformly from `0..<vocab`, reproducibly for `seed`.
func tokens(_ n: Int, vocab: Int, seed: UInt64) -> [Int] {
  var rng = SeededGenerator(seed: seed)
  return (0..<n).map { _ in Int(rng.next() % UInt64(vocab)) }
}

func writeTinyModel(_ configure: (inout TinyModel) -> Void = { _ in }, seed: UInt64) throws -> (TinyModel, URL, URL) {
  var m = TinyModel()
  configure(&m)
  let dir = temporaryDirectory("subq-llm")
  let url = dir.appendingPathComponent("tiny.gguf")
  try m.write(to: url, seed: seed)
  return (m, url, dir)
}
