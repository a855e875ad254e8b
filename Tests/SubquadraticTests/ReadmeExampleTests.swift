import Subquadratic
import Testing

/// README.md's "Use it from Swift" example, line for line (only the prompt and new-query tensors,
/// which the README leaves to the reader, are defined here), so the documented API cannot drift
/// from the real one: if a name or signature in the README changes, this file stops compiling.
/// The checks are on what the README's comments promise.
struct ReadmeExampleTests {
  @Test func theReadmeExampleRunsAsWritten() throws {
    let q = Tensor.randomNormal(shape: [1, 8, 4096, 64], seed: 1)   // [B, Hq, N, D]
    let k = Tensor.randomNormal(shape: [1, 2, 4096, 64], seed: 2)   // [B, Hkv, N, D], grouped-query
    let v = Tensor.randomNormal(shape: [1, 2, 4096, 64], seed: 3)
    let flash = try FlashAttention()
    let r = try flash.attention(queries: q, keys: k, values: v,
                                options: AttentionOptions(causal: true, returnLSE: true))
    #expect(r.output.shape == [1, 8, 4096, 64])
    #expect(r.lse!.shape == [1, 8, 4096])

    // Any method by name, with parameters, behind the same interface:
    let hip = try AttentionMethods.make("hip", parameters: MethodParameters(["k": "512"]))
    #expect(type(of: hip).info.name == "hip")

    // Training: gradients with respect to Q, K, V (deterministic for any thread count).
    let dO = Tensor.randomNormal(shape: [1, 8, 4096, 64], seed: 4)
    let g = try flash.gradients(queries: q, keys: k, values: v, outputGradient: dO,
                                options: AttentionOptions(causal: true))
    #expect(g.queries.shape == q.shape && g.keys.shape == k.shape && g.values.shape == v.shape)

    // Generation: a paged KV cache and a split-KV decode step.
    let promptK = Tensor.randomNormal(shape: [2, 1000, 64], seed: 5)
    let promptV = Tensor.randomNormal(shape: [2, 1000, 64], seed: 6)
    let qNew = Tensor.randomNormal(shape: [1, 8, 1, 64], seed: 7)
    let cache = try PagedKVCache(.init(kvHeads: 2, headDim: 64, pageCount: 1024, storage: .float16))
    let s = cache.createSequence()
    try cache.append(s, keys: promptK, values: promptV)                // [Hkv, n, D]
    let step = try SplitKVAttention().attention(queries: qNew, cache: cache, layer: 0, sequences: [s],
                                                options: AttentionOptions(causal: true))
    #expect(step.output.shape == [1, 8, 1, 64])
    // The decode step over the cache is attention of the new query over the prompt.
    let exact = try flash.attention(queries: qNew, keys: promptK.reshaped([1, 2, 1000, 64]),
                                    values: promptV.reshaped([1, 2, 1000, 64]),
                                    options: AttentionOptions(causal: true))
    let a = exact.output.scalars, b = step.output.scalars
    let worst = zip(a, b).map { abs($0 - $1) }.max()!
    #expect(worst < 5e-3, "float16 pages: keys/values rounded to 11 bits")
  }
}
