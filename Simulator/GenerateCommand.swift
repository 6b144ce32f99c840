import ArgumentParser

/// Placeholder for `meter-sim generate`, written on another branch; replaced when that lands.
struct GenerateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Writes the company's CSV data sets (not implemented on this branch yet).")

    func run() async throws {
        throw ValidationError("meter-sim generate is not implemented yet")
    }
}
