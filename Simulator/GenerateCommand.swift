import ArgumentParser
import Foundation
import MeterCore
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

    @Option(
        help: """
            For a live demo (YYYY-MM-DD, usually today): maintenance, feedback and complaints fall up to this day, \
            and a tenth of the customers are installed in the 11 months before it.
            """)
    var eventsThrough: String?

    func validate() throws {
        guard self.customers >= 1 else { throw ValidationError("--customers must be at least 1") }
        guard (1...1200).contains(self.months) else { throw ValidationError("--months must be between 1 and 1200") }
        guard (1902...9000).contains(self.year) else { throw ValidationError("--year must be between 1902 and 9000") }
        if let text = self.eventsThrough, Self.day(text) == nil {
            throw ValidationError("--events-through: expected YYYY-MM-DD, got \"\(text)\"")
        }
    }

    /// Days since 1970-01-01 of a `YYYY-MM-DD` date.
    static func day(_ text: String) -> Int? {
        let parts = text.split(separator: "-").compactMap { Int($0) }
        guard text.count == 10, parts.count == 3, (1...12).contains(parts[1]), (1...31).contains(parts[2]) else { return nil }
        return RFC3339.daysFromCivil(year: parts[0], month: parts[1], day: parts[2])
    }

    func run() async throws {
        let start = ContinuousClock.now
        try CompanyGenerator(
            customers: self.customers, seed: self.seed, year: self.year, months: self.months,
            eventsThrough: self.eventsThrough.flatMap(Self.day)
        ).write(to: self.out)
        let elapsed = ContinuousClock.now - start
        print(
            "wrote \(CompanyGenerator.files.count) files for \(self.customers) customers to \(self.out) in \(elapsed.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 2))))"
        )
    }
}
