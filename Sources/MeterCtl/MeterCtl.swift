import ArgumentParser

@main
struct MeterCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meterctl",
        abstract: "Operates meterd: imports the company's CSV files and prints its KPIs.",
        subcommands: [ImportCommand.self, KPICommand.self, KPIBenchmarkCommand.self])
}
