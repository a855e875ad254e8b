import Foundation
import Subquadratic
import SubqLLM
import SubqTestSupport
import Testing

/// The byte-level BPE tokenizer on the tiny vocabulary.
struct TokenizerTests {
  func tokenizer(splitDigits: Bool = true) throws -> Tokenizer {
    let (toks, types) = tinyVocabulary()
    return try Tokenizer(tokens: toks, tokenTypes: types, merges: tinyMerges, bos: 0, eos: 0, addBOS: false, splitDigits: splitDigits)
  }

  /// The pieces follow the regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
  /// after digits are split one by one (smollm); worked out by hand from the regex.
  @Test func preTokenizerSplitsAsTheRegex() throws {
    let t = try tokenizer()
    #expect(t.preTokenize("Hello world's 123  x") == ["Hello", " world", "'s", " ", "1", "2", "3", " ", " x"])
    #expect(t.preTokenize("a\n\nb  ") == ["a", "\n", "\n", "b", "  "])
    #expect(t.preTokenize("we're DON'T") == ["we", "'re", " DON", "'", "T"])
    #expect(t.preTokenize("x...!? y") == ["x", "...!?", " y"])
    #expect(t.preTokenize("café naïve 東京") == ["café", " naïve", " 東京"])
    let g = try tokenizer(splitDigits: false)
    #expect(g.preTokenize("in 2024,") == ["in", " 2024", ","])
  }

  /// "\n\nb": the whitespace run is followed by a letter, so `\s+(?!\S)` takes all but its last
  /// character and `\s+` the last one.
  @Test func whitespaceBeforeAWordKeepsItsLastCharacterSeparate() throws {
    let t = try tokenizer()
    #expect(t.preTokenize("a\n\nb") == ["a", "\n", "\n", "b"])
    #expect(t.preTokenize("a   b") == ["a", "  ", " b"])
    #expect(t.preTokenize("a \n") == ["a", " \n"])
  }

  /// Merges apply lowest rank first: " the" → "Ġt" (rank 0) + "he" (rank 1) → "Ġthe" (rank 2);
  /// " lower": "er" (rank 5) first, then "lo" (12), then "low" (13); "Ġ l" is not a merge.
  @Test func mergesFollowRank() throws {
    let t = try tokenizer()
    let ids = t.encode(" the lower")
    #expect(ids.map { t.tokens[$0] } == ["Ġthe", "Ġ", "low", "er"])
    #expect(t.encode("ring").map { t.tokens[$0] } == ["r", "ing"])
    // "rer": "er" (rank 5) beats the leftmost pair "re" (rank 11).
    #expect(t.encode("rer").map { t.tokens[$0] } == ["r", "er"])
  }

  @Test func specialTokensAreMatchedInText() throws {
    let t = try tokenizer()
    let ids = t.encode("<|im_start|>user<|im_end|>")
    #expect(ids.first == 1 && ids.last == 2)
    #expect(t.decode(ids) == "<|im_start|>user<|im_end|>")
    let literal = t.encode("<|im_start|>", parseSpecial: false)
    #expect(!literal.contains(1) && t.decode(literal) == "<|im_start|>")
    #expect(t.stopTokens.contains(2) && t.stopTokens.contains(0))
  }

  /// decode(encode(s)) == s on random strings mixing ASCII, digits, whitespace runs, accents,
  /// CJK, emoji (4-byte UTF-8) and combining marks.
  @Test func roundTripsArbitraryUTF8() throws {
    let t = try tokenizer()
    let seed = testSeed(7)
    var rng = SeededGenerator(seed: seed)
    let alphabet: [String] = ["a", "Z", "t", "h", "e", " ", "  ", "\n", "\t", "'", "s", "'re", "7", "42", ".", "!", "é", "ñ", "東", "京",
                              "🙂", "👩‍👩‍👧", "\u{301}", "ß", "Ω", "<", "|", "<|im_end|>", "\r\n", "\u{00A0}", "٣"]
    for _ in 0..<200 {
      let n = Int(rng.next() % 30)
      let s = (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }.joined()
      let ids = t.encode(s)
      #expect(t.decode(ids) == s, "seed \(seed): \(s.debugDescription)")
      var stream = StreamingDecoder(t)
      var text = ""
      for id in ids { text += stream.push(id) }
      text += stream.flush()
      #expect(text == s, "streaming, seed \(seed): \(s.debugDescription)")
    }
  }
}
