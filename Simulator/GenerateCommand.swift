import ArgumentParser
import Foundation
import SimulatorCore

/// `meter-sim generate`: the company's CSV files for a synthetic company (SPEC.md section 4).
struct GenerateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write the company's CSV files for a synthetic company.",
        discussion: """
            Writes \(CompanyGenerator.files.joined(separator: ", ")) with the distributions of the use case's \
            generator: regions North/South/East/West, installation dates over the year two years before \
            --year, one monthly row per customer and month (100–1000 kWh, 0.10–0.20 per kWh, status \
            Good/Fair/Poor at 0.7/0.2/0.1), maintenance requests for 20% of customers, one feedback per \
            customer (score 1–5); plus technicians, installations, bills and complaints consistent with \
            them. The same seed and options give the same files.
            """)

    @Option(help: "Number of customers.")
    var customers: Int

    @Option(help: "Directory to write the files into (created if needed).")
    var out: String

    @Option(help: "Seed of the random generator.")
    var seed: UInt64 = 42

    @Option(help: "Year of the monthly data.")
    var year: Int = 2023

    @Option(help: "Monthly rows per customer, from January of --year.")
    var months: Int = 12

    func validate() throws {
        guard self.customers >= 1 else { throw ValidationError("--customers must be at least 1") }
        guard (1...1200).contains(self.months) else { throw ValidationError("--months must be between 1 and 1200") }
        guard (1902...9000).contains(self.year) else { throw ValidationError("--year must be between 1902 and 9000") }
    }

    func run() async throws {
        let start = ContinuousClock.now
        try CompanyGenerator(customers: self.customers, seed: self.seed, year: self.year, months: self.months).write(to: self.out)
        let elapsed = ContinuousClock.now - start
        print(
            "wrote \(CompanyGenerator.files.count) files for \(self.customers) customers to \(self.out) in \(elapsed.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 2))))"
        )
    }
}
