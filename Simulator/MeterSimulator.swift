import ArgumentParser

@main
struct MeterSimulator: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meter-sim",
        abstract: "Simulates smart meters and generates the company's data sets.",
        subcommands: [GenerateCommand.self])
}
