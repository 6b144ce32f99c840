import ArgumentParser

@main
struct MeterSimulator: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meter-sim",
        abstract: "Simulates a fleet of smart meters pushing readings to meterd, and generates company data.",
        subcommands: [RunCommand.self, GenerateCommand.self])
}
