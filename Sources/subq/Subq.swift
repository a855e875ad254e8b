import ArgumentParser
import Foundation
import Subquadratic

/// `subq`: run, benchmark and compare Subquadratic's methods from the command line.
///
/// Every command is a thin layer over the library; errors print one line on stderr and exit
/// with status 2, and no output file is left behind.
@main
struct Subq: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "subq",
    abstract: "Fast attention and sequence mixers for long sequences, on CPUs.",
    version: BuildInfo.version,
    subcommands: [
      CompareCommand.self,
      AttentionCommand.self,
      AttentionBackwardCommand.self,
      DecodeBenchCommand.self,
      BenchCommand.self,
      SparseBenchCommand.self,
      PeakCommand.self,
      MethodsCommand.self,
      RingCommand.self,
      MixCommand.self,
      MixBenchCommand.self,
      ScanCommand.self,
      SSDCommand.self,
      TitansCommand.self,
      ScanBenchCommand.self,
      GenerateCommand.self,
      PerplexityCommand.self,
      NeedleCommand.self,
      TokenizeCommand.self,
      TraceCommand.self,
    ])

  static func main() {
    do {
      try TensorBufferCache.shared.applyEnvironment()
      var command = try parseAsRoot()
      try command.run()
    } catch let error as SubqError {
      fail(error.description)
    } catch {
      if exitCode(for: error) == .success {
        print(fullMessage(for: error))
        return
      }
      fail(message(for: error))
    }
  }
}

/// Prints `subq: error: <message>` as one line on stderr and exits with status 2.
func fail(_ message: String) -> Never {
  let line = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
    .filter { !$0.isEmpty }.joined(separator: "; ")
  FileHandle.standardError.write(Data("subq: error: \(line)\n".utf8))
  exit(2)
}

/// Prints a progress or status line on stderr.
func note(_ message: String) {
  FileHandle.standardError.write(Data((message + "\n").utf8))
}
