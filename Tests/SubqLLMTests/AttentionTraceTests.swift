import Foundation
import Subquadratic
import SubqLLM
import SubqTestSupport
import Testing

/// Causal grouped-query attention in Float64 with scale 1/√D: `[Hq, N, D]` queries, `[Hkv, N, D]`
/// keys and values (query head h reads key/value head h / (Hq / Hkv)); returns `[Hq, N, D]`.
func causalAttentionFloat64(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> [Double] {
  let Hq = q.shape[0], N = q.shape[1], D = q.shape[2], G = Hq / k.shape[0]
  let qs = q.scalars, ks = k.scalars, vs = v.scalars
  var out = [Double](repeating: 0, count: Hq * N * D)
  let scale = 1 / Double(D).squareRoot()
  for h in 0..<Hq {
    let g = h / G
    for i in 0..<N {
      var s = [Double](repeating: 0, count: i + 1)
      for j in 0...i {
        var dot = 0.0
        for d in 0..<D { dot += Double(qs[(h * N + i) * D + d]) * Double(ks[(g * N + j) * D + d]) }
        s[j] = dot * scale
      }
      let m = s.max()!
      var z = 0.0
      for j in 0...i { s[j] = Foundation.exp(s[j] - m); z += s[j] }
      for j in 0...i {
        let w = s[j] / z
        for d in 0..<D { out[(h * N + i) * D + d] += w * Double(vs[(g * N + j) * D + d]) }
      }
    }
  }
  return out
}

/// ``AttentionTrace``: what a session records of its layers' attention.
///
/// Tolerances: the layer output against Float64 attention of the recorded Q/K/V, relative
/// Frobenius error ≤ 1e-5 — flash in Float32 over ≤ 100 keys of dimension 16 leaves ~1e-7, while
/// Q/K recorded before RoPE, a wrong position, a wrong kv head for a query head or rows of another
/// layer change the output by 1e-2 or more. Layer 0's Q/K/V against the Float64 model reference:
/// 1e-4 (quantized products of 96 terms in Float32, as `ModelForwardTests`).
@Suite(.serialized)
struct AttentionTraceTests {
  @Test func recordedAttentionReproducesTheLayerOutput() throws {
    let seed = testSeed(61)
    let (tiny, url, dir) = try writeTinyModel(seed: seed)
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = try LlamaModel(path: url.path)
    let toks = tokens(83, vocab: tiny.vocab, seed: seed)
    let plain = try LlamaSession(model: model, capacity: 100, threads: 2)
    let expectedLogits = try plain.prefill(toks)

    let session = try LlamaSession(model: model, capacity: 100, threads: 2)
    let trace = try session.startTrace(layers: [1, 0, 1])
    let logits = try session.prefill(toks)
    #expect(logits == expectedLogits, "recording changed the model's output")
    #expect(trace.layers == [0, 1] && trace.count == 83 && trace.startPosition == 0)
    let D = tiny.headDim
    for l in [0, 1] {
      let r = try trace.layer(l)
      #expect(r.queries.shape == [6, 83, D] && r.output.shape == [6, 83, D])
      #expect(r.keys.shape == [2, 83, D] && r.values.shape == [2, 83, D])
      let err = relativeError(r.output, causalAttentionFloat64(r.queries, r.keys, r.values))
      #expect(err <= 1e-5, "layer \(l): output vs attention of the recorded Q/K/V \(err), seed \(seed)")
    }
    // The two layers' records differ (each layer's own rows).
    #expect(try trace.layer(0).keys != trace.layer(1).keys)

    // Layer 0's Q, K, V against the Float64 model: RMSNorm of the embedding, the projections,
    // RoPE at each position.
    let r0 = try trace.layer(0)
    let refQ = layer0Projection(tiny, toks, "attn_q.weight", heads: 6, rope: true)
    let refK = layer0Projection(tiny, toks, "attn_k.weight", heads: 2, rope: true)
    let refV = layer0Projection(tiny, toks, "attn_v.weight", heads: 2, rope: false)
    for (name, got, ref) in [("q", r0.queries, refQ), ("k", r0.keys, refK), ("v", r0.values, refV)] {
      let err = relativeError(got, ref)
      #expect(err <= 1e-4, "layer 0 \(name) vs Float64 reference \(err), seed \(seed)")
    }
  }

  /// `[H, N, D]` of layer 0's projection `name` in Float64 (RoPE at positions 0..<N if `rope`).
  func layer0Projection(_ tiny: TinyModel, _ toks: [Int], _ name: String, heads H: Int, rope: Bool) -> [Double] {
    let dim = tiny.dim, D = tiny.headDim, N = toks.count
    let E = tiny.weights["token_embd.weight"]!, w = tiny.weights["blk.0.attn_norm.weight"]!, W = tiny.weights["blk.0." + name]!
    var out = [Double](repeating: 0, count: H * N * D)
    for (i, t) in toks.enumerated() {
      let x = Array(E[(t * dim)..<((t + 1) * dim)])
      let inv = 1 / (x.reduce(0) { $0 + $1 * $1 } / Double(dim) + Double(tiny.eps)).squareRoot()
      let h = x.enumerated().map { $0.element * inv * w[$0.offset] }
      var y = (0..<(H * D)).map { r in (0..<dim).reduce(0.0) { $0 + W[r * dim + $1] * h[$1] } }
      if rope {
        for hh in 0..<H {
          for p in 0..<(D / 2) {
            let a = Double(i) * Foundation.pow(tiny.theta, -2 * Double(p) / Double(D))
            let x0 = y[hh * D + 2 * p], x1 = y[hh * D + 2 * p + 1]
            y[hh * D + 2 * p] = x0 * Foundation.cos(a) - x1 * Foundation.sin(a)
            y[hh * D + 2 * p + 1] = x0 * Foundation.sin(a) + x1 * Foundation.cos(a)
          }
        }
      }
      for hh in 0..<H { for d in 0..<D { out[(hh * N + i) * D + d] = y[hh * D + d] } }
    }
    return out
  }

  /// A prefix prefill then decode steps record the same rows as one prefill (decode attends by
  /// split-KV on the pages: its output agrees with flash's to Float32 rounding).
  @Test func prefillAndDecodeStepsAppendInOrder() throws {
    let seed = testSeed(62)
    let (tiny, url, dir) = try writeTinyModel(seed: seed)
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = try LlamaModel(path: url.path)
    let toks = tokens(70, vocab: tiny.vocab, seed: seed)
    let whole = try LlamaSession(model: model, capacity: 70, threads: 2)
    let a = try whole.startTrace(layers: [1])
    _ = try whole.prefill(toks)
    let stepped = try LlamaSession(model: model, capacity: 70, threads: 2)
    let b = try stepped.startTrace(layers: [1])
    _ = try stepped.prefill(Array(toks[0..<40]))
    for t in toks[40...] { _ = try stepped.decode(t) }
    #expect(b.count == 70)
    let ra = try a.layer(1), rb = try b.layer(1)
    for (name, x, y) in [("q", ra.queries, rb.queries), ("k", ra.keys, rb.keys), ("v", ra.values, rb.values), ("out", ra.output, rb.output)] {
      let err = relativeError(y, x.scalars.map(Double.init))
      #expect(err <= 1e-5, "\(name): decode steps vs one prefill \(err)")
    }
    let err = relativeError(rb.output, causalAttentionFloat64(rb.queries, rb.keys, rb.values))
    #expect(err <= 1e-5, "decode-step outputs vs attention of the recorded Q/K/V \(err)")
  }

  @Test func traceStartsAtThePositionAndFollowsTheCache() throws {
    let (tiny, url, dir) = try writeTinyModel(seed: testSeed(63))
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = try LlamaModel(path: url.path)
    let toks = tokens(30, vocab: tiny.vocab, seed: 5)
    let session = try LlamaSession(model: model, capacity: 40, threads: 2)
    _ = try session.prefill(Array(toks[0..<10]))
    let trace = try session.startTrace(layers: [0])
    _ = try session.prefill(Array(toks[10..<30]))
    #expect(trace.startPosition == 10 && trace.count == 20)
    // A step that cannot run (past the capacity) records nothing.
    #expect(throws: SubqError.self) { _ = try session.prefill(Array(toks[0..<20])) }
    #expect(trace.count == 20)
    // The trace's rows are those of positions 10..<30: the same as a session that ran all 30.
    let full = try LlamaSession(model: model, capacity: 40, threads: 2)
    let all = try full.startTrace(layers: [0])
    _ = try full.prefill(toks)
    let k = try trace.layer(0).keys, kAll = try all.layer(0).keys
    let D = tiny.headDim
    var num = 0.0, den = 0.0
    for g in 0..<2 {
      for i in 0..<20 {
        for d in 0..<D {
          let x = Double(k[g, i, d]), y = Double(kAll[g, i + 10, d])
          num += (x - y) * (x - y)
          den += y * y
        }
      }
    }
    #expect((num / den).squareRoot() <= 1e-5, "keys of positions 10..<30")
    session.reset()
    #expect(trace.count == 0)
    #expect(session.stopTrace() === trace && session.trace == nil)
  }

  /// Exact attention that throws from its second call on (layer 1 of a prefill): the step fails
  /// after layer 0 recorded its rows.
  struct FailsAfterFirstCall: AttentionMethod {
    final class Calls: @unchecked Sendable { var count = 0 }
    static let info = MethodInfo(name: "test-fails-later", summary: "throws from the second call on (test)", paper: "—", complexity: "—",
                                 isExact: true, supportedFeatures: ["causal"])
    let calls = Calls()
    init(parameters: MethodParameters) throws(SubqError) {}
    init() {}
    func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
      calls.count += 1
      if calls.count > 1 { throw .argument(op: "attention.test-fails-later", name: "call", value: "\(calls.count)", reason: "fails on purpose") }
      return try FlashAttention().attention(queries: queries, keys: keys, values: values, options: options)
    }
  }

  /// A step that fails in a later layer leaves the trace as it was (the rows layer 0 appended are
  /// dropped), and the next step records the right positions.
  @Test func aFailedStepRecordsNothing() throws {
    let (tiny, url, dir) = try writeTinyModel(seed: testSeed(67))
    defer { try? FileManager.default.removeItem(at: dir) }
    let model = try LlamaModel(path: url.path)
    let toks = tokens(40, vocab: tiny.vocab, seed: 9)
    let session = try LlamaSession(model: model, capacity: 40, threads: 2)
    let trace = try session.startTrace(layers: [0, 1])
    _ = try session.prefill(Array(toks[0..<25]))
    session.attention = LLMAttention(method: FailsAfterFirstCall(), exactDecode: false)
    #expect(throws: SubqError.self) { _ = try session.prefill(Array(toks[25..<40])) }
    #expect(trace.count == 25 && session.position == 25)
    // Other tokens at positions 25..<40 this time: rows of the failed step would differ.
    let retry = tokens(15, vocab: tiny.vocab, seed: 10)
    session.attention = .exact
    _ = try session.prefill(retry)
    let full = try LlamaSession(model: model, capacity: 40, threads: 2)
    let all = try full.startTrace(layers: [0, 1])
    _ = try full.prefill(Array(toks[0..<25]) + retry)
    for l in [0, 1] {
      let got = try trace.layer(l), want = try all.layer(l)
      #expect(got.keys.shape == want.keys.shape && got.queries.shape == want.queries.shape)
      let err = relativeError(got.keys, want.keys.scalars.map(Double.init))
      #expect(err <= 1e-5, "layer \(l): keys after a failed step \(err)")
    }
  }

  @Test func badLayersThrow() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(64))
    defer { try? FileManager.default.removeItem(at: dir) }
    let session = try LlamaSession(model: try LlamaModel(path: url.path), capacity: 8, threads: 1)
    #expect(throws: SubqError.argument(op: "llm.trace", name: "layers", value: "2", reason: "must be in 0..<2 (the model's layers)")) {
      try session.startTrace(layers: [0, 2])
    }
    #expect(throws: SubqError.self) { try session.startTrace(layers: []) }
    #expect(session.trace == nil)
    let t = try session.startTrace(layers: [1])
    #expect(throws: SubqError.self) { _ = try t.layer(0) }
  }
}

/// `subq trace` on the tiny model.
@Suite(.serialized)
struct TraceCLITests {
  @Test func writesLayersThatReproduceTheOutput() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(65))
    defer { try? FileManager.default.removeItem(at: dir) }
    let text = dir.appendingPathComponent("t.txt")
    try String(repeating: "the lower ring was on the sand. ", count: 8).write(to: text, atomically: true, encoding: .utf8)
    let out = dir.appendingPathComponent("trace")
    let r = try runSubq(["trace", "--model", url.path, "--text", text.path, "--tokens", "77", "--layers", "1,0", "--out-dir", out.path])
    #expect(r.status == 0, "\(r.stderr)")
    for l in [0, 1] {
      let d = out.appendingPathComponent("layer-\(l)").path
      let q = try NPY.read(d + "/q.npy"), k = try NPY.read(d + "/k.npy"), v = try NPY.read(d + "/v.npy"), o = try NPY.read(d + "/out.npy")
      #expect(q.shape == [6, 77, 16] && k.shape == [2, 77, 16] && v.shape == [2, 77, 16] && o.shape == [6, 77, 16])
      let err = relativeError(o, causalAttentionFloat64(q, k, v))
      #expect(err <= 1e-5, "layer \(l): \(err)")
    }
    let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("trace.json"))) as? [String: Any]
    #expect(meta?["tokens"] as? Int == 77 && (meta?["tokenIds"] as? [Int])?.count == 77 && meta?["layers"] as? [Int] == [0, 1])
  }

  @Test func errorsAreOneLineWithStatus2AndWriteNothing() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(66))
    defer { try? FileManager.default.removeItem(at: dir) }
    let text = dir.appendingPathComponent("t.txt")
    try "some text".write(to: text, atomically: true, encoding: .utf8)
    let out = dir.appendingPathComponent("trace").path
    let base = ["trace", "--model", url.path, "--text", text.path, "--out-dir", out]
    let cases: [([String], String)] = [
      (base + ["--layers", "2"], "--layers = 2: must be in 0..<2"),
      (base + ["--layers", "0,x"], "--layers"),
      (base + ["--layers", "0", "--tokens", "500"], "has only"),
      (base + ["--layers", "0", "--tokens", "0"], "--tokens = 0"),
      (base + ["--layers", "0", "--tokens", "600"], "exceeds the model's context 512"),
      (base + ["--layers", "0", "--kv-cache", "f16"], "--kv-cache f16"),
      (base + ["--layers", "0", "--param", "x=1"], "--param"),
      (["trace", "--model", url.path, "--text", dir.appendingPathComponent("none.txt").path, "--out-dir", out, "--layers", "0"], "no such file"),
      (["trace", "--model", url.path, "--text", text.path, "--out-dir", url.path, "--layers", "0"], "not a directory"),
    ]
    for (args, message) in cases {
      let r = try runSubq(args)
      #expect(r.status == 2, "\(args): status \(r.status)")
      #expect(r.stderr.contains(message) && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
    }
    #expect(!FileManager.default.fileExists(atPath: out), "an error left output behind")
  }
}

/// `subq trace` on SmolLM2-135M: the recorded layers reproduce the model's attention output.
@Suite(.enabled(if: RealModel.available, "model file missing: \(RealModel.path) (run scripts/fetch-model.sh)"), .serialized)
struct RealModelTraceTests {
  /// 160 tokens of English; layers 0, 15 and 29. Tolerance 1e-5 relative, as for the tiny model.
  @Test func tracedLayersReproduceTheOutput() throws {
    let m = try #require(RealModel.model, "the model at \(RealModel.path) exists but did not load")
    let path = try #require(RealModel.englishText, "no license text under /usr/share/common-licenses")
    let toks = Array(m.tokenizer.encode(try String(contentsOfFile: path, encoding: .utf8)).prefix(160))
    let session = try LlamaSession(model: m, capacity: 160)
    let trace = try session.startTrace(layers: [0, 15, 29])
    _ = try session.prefill(toks)
    for l in [0, 15, 29] {
      let r = try trace.layer(l)
      #expect(r.queries.shape == [9, 160, 64] && r.keys.shape == [3, 160, 64])
      let err = relativeError(r.output, causalAttentionFloat64(r.queries, r.keys, r.values))
      #expect(err <= 1e-5, "layer \(l): \(err)")
    }
  }
}
