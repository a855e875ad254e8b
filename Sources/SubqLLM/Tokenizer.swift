import SubqCore
import Synchronization

/// Byte-level BPE tokenizer (GPT-2 style) built from GGUF metadata.
///
/// Reads `tokenizer.ggml.model` (must be `gpt2`), `tokenizer.ggml.tokens`, `tokenizer.ggml.merges`,
/// `tokenizer.ggml.token_type`, `tokenizer.ggml.pre`, the special token ids and
/// `tokenizer.ggml.add_bos_token`.
///
/// Encoding: control and user-defined tokens written literally in the text (such as
/// `<|im_start|>`) become their ids when `parseSpecial` is set; the rest is split by the
/// pre-tokenizer the model declares, each piece's UTF-8 bytes are mapped to GPT-2's printable byte
/// alphabet, and adjacent symbols are merged in the order of the merge list (lowest rank first)
/// until no listed pair remains. Decoding maps the token strings back to bytes, so
/// `decode(encode(s)) == s` for every string.
///
/// Pre-tokenizers: `gpt2` and the models that use its regex (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|
/// ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`), and `smollm`/`starcoder`/`refact`/`codeshell`
/// which first split every digit into its own piece (`\p{N}`) and then apply the same regex.
/// The regex is implemented as a scanner over Unicode scalars (letters: category L*, numbers:
/// N*, whitespace: the White_Space property). Other pre-tokenizers are rejected.
public final class Tokenizer: @unchecked Sendable {
  /// Token strings (in the byte-level alphabet for normal tokens).
  public let tokens: [String]
  /// ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  public let tokenTypes: [Int]
  public let bos: Int?
  public let eos: Int?
  /// End-of-turn tokens that stop generation besides `eos` (`<|im_end|>` when present).
  public let stopTokens: Set<Int>
  public let addBOS: Bool
  /// The token for bytes the vocabulary cannot spell, if any.
  public let unknown: Int?
  public let preTokenizer: String
  let splitDigits: Bool
  let tokenIDs: [String: Int]
  /// (left id, right id) → (rank, merged id).
  let merges: [UInt64: (rank: Int32, id: Int32)]
  /// Special tokens matched literally in text, longest first.
  let specials: [(text: [UInt8], id: Int)]
  /// byte → token id of its one-character byte-level symbol.
  let byteTokens: [Int32]
  /// token id → bytes it decodes to.
  let tokenBytes: [[UInt8]]
  /// Whether a special token starts with this byte.
  let specialFirstBytes: [Bool]
  let cache = Mutex<[String: [Int32]]>([:])

  /// Builds the tokenizer from a GGUF file's metadata.
  /// - Throws: ``SubqError/file(path:reason:)`` for missing or malformed keys,
  ///   ``SubqError/unsupported(op:feature:reason:)`` for a tokenizer model or pre-tokenizer this
  ///   library does not implement.
  public convenience init(gguf: GGUFFile) throws(SubqError) {
    let model = try gguf.string("tokenizer.ggml.model")
    guard model == "gpt2" else {
      throw .unsupported(op: "tokenizer", feature: "tokenizer.ggml.model '\(model)'", reason: "only byte-level BPE ('gpt2') is implemented")
    }
    let pre = (try? gguf.string("tokenizer.ggml.pre")) ?? "default"
    let splitDigits: Bool
    switch pre {
    case "gpt2", "default", "gpt-2", "olmo", "mpt", "jais": splitDigits = false
    case "smollm", "starcoder", "refact", "codeshell": splitDigits = true
    default:
      throw .unsupported(op: "tokenizer", feature: "pre-tokenizer '\(pre)'",
                         reason: "implemented: gpt2, default, mpt, olmo, jais, smollm, starcoder, refact, codeshell")
    }
    let toks = try gguf.strings("tokenizer.ggml.tokens")
    guard !toks.isEmpty else { throw .file(path: gguf.path, reason: "metadata key 'tokenizer.ggml.tokens' is empty") }
    var types = gguf.metadata["tokenizer.ggml.token_type"] != nil ? try gguf.ints("tokenizer.ggml.token_type") : []
    if types.isEmpty { types = [Int](repeating: 1, count: toks.count) }
    guard types.count == toks.count else {
      throw .file(path: gguf.path, reason: "metadata key 'tokenizer.ggml.token_type' has \(types.count) entries, tokenizer.ggml.tokens has \(toks.count)")
    }
    let mergeList = try gguf.strings("tokenizer.ggml.merges")
    func optionalID(_ key: String) throws(SubqError) -> Int? {
      guard gguf.metadata[key] != nil else { return nil }
      let id = try gguf.int(key)
      guard id >= 0 && id < toks.count else {
        throw .file(path: gguf.path, reason: "metadata key '\(key)' = \(id) is outside the vocabulary (0..<\(toks.count))")
      }
      return id
    }
    try self.init(tokens: toks, tokenTypes: types, merges: mergeList, bos: optionalID("tokenizer.ggml.bos_token_id"),
                  eos: optionalID("tokenizer.ggml.eos_token_id"), unknown: optionalID("tokenizer.ggml.unknown_token_id"),
                  addBOS: (gguf.metadata["tokenizer.ggml.add_bos_token"] != nil ? try gguf.bool("tokenizer.ggml.add_bos_token") : false),
                  splitDigits: splitDigits, preTokenizer: pre, source: gguf.path)
  }

  /// Builds a tokenizer from its parts (as a GGUF file stores them).
  public init(tokens: [String], tokenTypes: [Int], merges mergeList: [String], bos: Int?, eos: Int?, unknown: Int? = nil, addBOS: Bool,
              splitDigits: Bool, preTokenizer: String = "gpt2", source: String = "tokenizer") throws(SubqError) {
    self.tokens = tokens
    self.tokenTypes = tokenTypes
    self.bos = bos
    self.eos = eos
    self.addBOS = addBOS
    self.splitDigits = splitDigits
    self.preTokenizer = preTokenizer
    var ids: [String: Int] = [:]
    ids.reserveCapacity(tokens.count)
    for (i, t) in tokens.enumerated() where ids[t] == nil { ids[t] = i }
    tokenIDs = ids

    let (toUnicode, fromUnicode) = Tokenizer.byteAlphabet()
    // Some vocabularies lack a few bytes (SmolLM2's has no token for 0x04, 0x06, 0x13, 0x14,
    // 0x16, 0x1D, 0xF1, 0xF2 and the bytes UTF-8 never uses); those bytes become `unknown`, or
    // are dropped when there is no unknown token (as llama.cpp does).
    var bt = [Int32](repeating: -1, count: 256)
    var found = 0
    for b in 0..<256 {
      if let id = ids[String(toUnicode[b])] {
        bt[b] = Int32(id)
        found += 1
      }
    }
    guard found >= 128 else {
      throw .file(path: source, reason: "vocabulary has tokens for only \(found) of the 256 byte symbols: not a byte-level BPE vocabulary")
    }
    byteTokens = bt
    self.unknown = unknown

    var m: [UInt64: (rank: Int32, id: Int32)] = [:]
    m.reserveCapacity(mergeList.count)
    for (rank, line) in mergeList.enumerated() {
      // "left right": the first space separates (neither part contains a plain space).
      guard let sp = line.firstIndex(of: " ") else {
        throw .file(path: source, reason: "merge #\(rank) '\(line)' is not two symbols separated by a space")
      }
      let a = String(line[..<sp]), b = String(line[line.index(after: sp)...])
      guard let ia = ids[a], let ib = ids[b], let ic = ids[a + b] else {
        throw .file(path: source, reason: "merge #\(rank) '\(line)' names a symbol missing from the vocabulary")
      }
      let key = UInt64(ia) << 32 | UInt64(ib)
      if m[key] == nil { m[key] = (Int32(rank), Int32(ic)) }
    }
    merges = m

    var tb: [[UInt8]] = []
    tb.reserveCapacity(tokens.count)
    var sp: [(text: [UInt8], id: Int)] = []
    var stops: Set<Int> = []
    for (i, t) in tokens.enumerated() {
      let type = tokenTypes[i]
      if type == 3 || type == 4 {
        // Control and user-defined tokens are literal text.
        tb.append(Array(t.utf8))
        if !t.isEmpty { sp.append((Array(t.utf8), i)) }
        if t == "<|im_end|>" || t == "<|eot_id|>" || t == "<|end|>" { stops.insert(i) }
      } else {
        var bytes: [UInt8] = []
        for ch in t.unicodeScalars {
          if let b = fromUnicode[ch] { bytes.append(b) } else { bytes.append(contentsOf: Array(String(ch).utf8)) }
        }
        tb.append(bytes)
      }
    }
    if let eos { stops.insert(eos) }
    stopTokens = stops
    tokenBytes = tb
    specials = sp.sorted { $0.text.count > $1.text.count }
    var first = [Bool](repeating: false, count: 256)
    for s in sp { first[Int(s.text[0])] = true }
    specialFirstBytes = first
  }

  /// Vocabulary size.
  public var vocabularySize: Int { tokens.count }

  /// The id of a token string, if in the vocabulary.
  public func id(of token: String) -> Int? { tokenIDs[token] }

  /// GPT-2's reversible map between bytes and printable Unicode characters.
  static func byteAlphabet() -> ([Character], [Unicode.Scalar: UInt8]) {
    var bs: [Int] = Array(33...126) + Array(161...172) + Array(174...255)
    var cs = bs
    var n = 0
    for b in 0..<256 where !bs.contains(b) {
      bs.append(b)
      cs.append(256 + n)
      n += 1
    }
    var to = [Character](repeating: " ", count: 256)
    var from: [Unicode.Scalar: UInt8] = [:]
    for (b, c) in zip(bs, cs) {
      let s = Unicode.Scalar(UInt32(c))!
      to[b] = Character(s)
      from[s] = UInt8(b)
    }
    return (to, from)
  }

  /// Token ids of `text`, with BOS first when the model asks for it and `addSpecial` is set.
  /// - Parameter parseSpecial: match control/user-defined tokens written literally in the text.
  public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int] {
    var out: [Int] = []
    if addSpecial, addBOS, let bos { out.append(bos) }
    let bytes = Array(text.utf8)
    var start = 0, i = 0
    if parseSpecial && !specials.isEmpty {
      while i < bytes.count {
        if specialFirstBytes[Int(bytes[i])] {
          if let s = specials.first(where: { matches($0.text, bytes, at: i) }) {
            encodeText(bytes[start..<i], into: &out)
            out.append(s.id)
            i += s.text.count
            start = i
            continue
          }
        }
        i += 1
      }
    }
    encodeText(bytes[start..<bytes.count], into: &out)
    return out
  }

  private func matches(_ pattern: [UInt8], _ bytes: [UInt8], at i: Int) -> Bool {
    if i + pattern.count > bytes.count { return false }
    for k in 0..<pattern.count where bytes[i + k] != pattern[k] { return false }
    return true
  }

  /// Encodes ordinary text (no special-token matching).
  func encodeText(_ bytes: ArraySlice<UInt8>, into out: inout [Int]) {
    if bytes.isEmpty { return }
    let text = String(decoding: bytes, as: UTF8.self)
    for piece in preTokenize(text) {
      let ids: [Int32]
      if let cached = cache.withLock({ $0[piece] }) {
        ids = cached
      } else {
        ids = bpe(Array(piece.utf8))
        cache.withLock { if $0.count < 100_000 { $0[piece] = ids } }
      }
      for id in ids {
        if id >= 0 { out.append(Int(id)) } else if let unknown { out.append(unknown) }
      }
    }
  }

  /// Byte-pair merging of one piece.
  func bpe(_ bytes: [UInt8]) -> [Int32] {
    var syms = bytes.map { byteTokens[Int($0)] }
    while syms.count > 1 {
      var best = Int32.max, at = -1, merged: Int32 = 0
      for k in 0..<(syms.count - 1) {
        if let m = merges[UInt64(UInt32(syms[k])) << 32 | UInt64(UInt32(syms[k + 1]))], m.rank < best {
          best = m.rank
          at = k
          merged = m.id
        }
      }
      if at < 0 { break }
      // Merge every occurrence of this pair, left to right (same as merging them one by one).
      let a = syms[at], b = syms[at + 1]
      var next: [Int32] = []
      next.reserveCapacity(syms.count)
      var k = 0
      while k < syms.count {
        if k + 1 < syms.count && syms[k] == a && syms[k + 1] == b {
          next.append(merged)
          k += 2
        } else {
          next.append(syms[k])
          k += 1
        }
      }
      syms = next
    }
    return syms
  }

  /// The pre-tokenizer's pieces of `text`.
  public func preTokenize(_ text: String) -> [String] {
    let scalars = Array(text.unicodeScalars)
    var pieces: [String] = []
    if splitDigits {
      var s = 0
      for (i, c) in scalars.enumerated() where Tokenizer.isNumber(c) {
        if s < i { Tokenizer.gpt2Split(scalars[s..<i], into: &pieces) }
        pieces.append(String(String.UnicodeScalarView(scalars[i...i])))
        s = i + 1
      }
      if s < scalars.count { Tokenizer.gpt2Split(scalars[s..<scalars.count], into: &pieces) }
    } else {
      Tokenizer.gpt2Split(scalars[...], into: &pieces)
    }
    return pieces
  }

  static func isLetter(_ c: Unicode.Scalar) -> Bool {
    switch c.properties.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
    default: return false
    }
  }

  static func isNumber(_ c: Unicode.Scalar) -> Bool {
    if c.isASCII { return c.value >= 48 && c.value <= 57 }
    switch c.properties.generalCategory {
    case .decimalNumber, .letterNumber, .otherNumber: return true
    default: return false
    }
  }

  static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }

  /// GPT-2's split: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
  static func gpt2Split(_ s: ArraySlice<Unicode.Scalar>, into pieces: inout [String]) {
    var i = s.startIndex
    let end = s.endIndex
    func emit(_ a: Int, _ b: Int) { pieces.append(String(String.UnicodeScalarView(s[a..<b]))) }
    while i < end {
      let c = s[i]
      // Contractions (lowercase, as the regex).
      if c == "'" && i + 1 < end {
        let n = s[i + 1]
        if n == "s" || n == "t" || n == "m" || n == "d" { emit(i, i + 2); i += 2; continue }
        if i + 2 < end {
          let n2 = s[i + 2]
          if (n == "r" && n2 == "e") || (n == "v" && n2 == "e") || (n == "l" && n2 == "l") { emit(i, i + 3); i += 3; continue }
        }
      }
      // Optional leading space, then a run of one class.
      var j = i
      if c == " " && i + 1 < end && !isSpace(s[i + 1]) { j = i + 1 }
      let first = s[j]
      if isLetter(first) {
        var k = j + 1
        while k < end && isLetter(s[k]) { k += 1 }
        emit(i, k); i = k; continue
      }
      if isNumber(first) {
        var k = j + 1
        while k < end && isNumber(s[k]) { k += 1 }
        emit(i, k); i = k; continue
      }
      if !isSpace(first) {
        var k = j + 1
        while k < end && !isSpace(s[k]) && !isLetter(s[k]) && !isNumber(s[k]) { k += 1 }
        emit(i, k); i = k; continue
      }
      // Whitespace run: all of it when it ends the text or precedes more whitespace only;
      // otherwise all but its last character (which then leads the next piece).
      var k = i + 1
      while k < end && isSpace(s[k]) { k += 1 }
      if k < end && k - i > 1 { k -= 1 }
      emit(i, k); i = k
    }
  }

  /// The bytes token `id` stands for (control tokens: their literal text).
  public func bytes(of id: Int) -> [UInt8] {
    id >= 0 && id < tokenBytes.count ? tokenBytes[id] : []
  }

  /// Text of a token sequence (invalid UTF-8 at the ends of partial sequences becomes U+FFFD).
  public func decode(_ ids: [Int]) -> String {
    var bytes: [UInt8] = []
    for id in ids { bytes.append(contentsOf: self.bytes(of: id)) }
    return String(decoding: bytes, as: UTF8.self)
  }
}

/// Turns a stream of token ids into text pieces that end on complete UTF-8 characters.
public struct StreamingDecoder {
  let tokenizer: Tokenizer
  var pending: [UInt8] = []

  public init(_ tokenizer: Tokenizer) { self.tokenizer = tokenizer }

  /// The text completed by `id` (possibly empty while a multi-byte character is incomplete).
  public mutating func push(_ id: Int) -> String {
    pending.append(contentsOf: tokenizer.bytes(of: id))
    // Keep back an incomplete trailing UTF-8 sequence (at most 3 bytes).
    var cut = pending.count
    var k = pending.count - 1
    var back = 0
    while k >= 0 && back < 4 {
      let b = pending[k]
      if b & 0xC0 == 0x80 { k -= 1; back += 1; continue }
      let need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
      if need > back + 1 { cut = k }
      break
    }
    let text = String(decoding: pending[0..<cut], as: UTF8.self)
    pending.removeFirst(cut)
    return text
  }

  /// Whatever is left (an incomplete character becomes U+FFFD).
  public mutating func flush() -> String {
    defer { pending = [] }
    return String(decoding: pending, as: UTF8.self)
  }
}
