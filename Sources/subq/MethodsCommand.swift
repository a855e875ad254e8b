import ArgumentParser
import Subquadratic

/// `subq methods`: every method with its parameters, defaults, complexity and paper.
struct MethodsCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "methods", abstract: "List every attention method with its parameters, complexity and paper.")

  func run() throws {
    for t in AttentionMethods.all {
      let i = t.info
      let kind = i.isExact ? "[exact]" : t is any PatternAttentionMethod.Type ? "[exact over its key pattern]" : "[approximate]"
      print("\(i.name)  \(kind)")
      print("  \(i.summary)")
      print("  complexity: \(i.complexity)")
      print("  paper: \(i.paper)")
      print("  options: \(i.supportedFeatures.isEmpty ? "none" : i.supportedFeatures.sorted().joined(separator: ", "))")
      for p in i.parameters {
        print("  --param \(p.name)=\(p.defaultValue)  \(p.summary)")
      }
      print()
    }
  }
}
