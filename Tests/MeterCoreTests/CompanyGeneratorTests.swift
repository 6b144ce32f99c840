import Foundation
import Testing

@testable import MeterCore
@testable import SimulatorCore

@Suite struct CompanyGeneratorTests {
    @Test(.timeLimit(.minutes(1)))
    func writesEveryFileWithTheUseCaseColumns() async throws {
        try await withTemporaryDirectory { directory in
            try CompanyGenerator(customers: 50, seed: 7).write(to: directory)
            let rows = try CompanyRows(directory: directory)
            #expect(
                rows.headers == [
                    "customer_data.csv": "CustomerID,Region,InstallationDate",
                    "monthly_data.csv": "CustomerID,Date,Consumption_kWh,Revenue_$,MeterStatus",
                    "maintenance_data.csv": "CustomerID,RequestDate,ResolutionDate,TechnicianID",
                    "feedback_data.csv": "CustomerID,FeedbackDate,SatisfactionScore",
                    "technicians.csv": "TechnicianID,TechnicianName",
                    "installations.csv": "CustomerID,RequestDate,InstallationDate,TechnicianID",
                    "bills.csv": "CustomerID,Month,Amount_$,Status",
                    "complaints.csv": "ComplaintID,CustomerID,Date,Category,ResolvedDate",
                ])
            #expect(Set(try FileManager.default.contentsOfDirectory(atPath: directory)) == Set(CompanyGenerator.files))
        }
    }

    /// The quick start's company (`--events-through` today): every panel of the default period has
    /// installations, complaints (also in the month running now) and technicians' work.
    @Test(.timeLimit(.minutes(1)))
    func aDemoCompanyHasEventsInTheDefaultPeriod() async throws {
        try await withTemporaryDirectory { directory in
            let today = RFC3339.daysFromCivil(year: 2026, month: 3, day: 20)
            // History from January last year to last month, as scripts/demo.sh asks.
            try CompanyGenerator(customers: 400, seed: 42, year: 2025, months: 14, eventsThrough: today).write(to: directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            #expect(try CompanyImporter.importDirectory(directory + "/csv", database: database).succeeded)
            let engine = offlineEngine(database)
            let nowMs = RFC3339.parseMilliseconds("2026-03-20T12:00:00Z")!
            let document = try await engine.document(period: engine.defaultPeriod(nowMs: nowMs), region: nil, nowMs: nowMs)
            #expect(document.period == .init(from: "2025-04", to: "2026-03") && document.currentMonth == "2026-03")
            // About a tenth of the customers are new, installed by technicians within the period.
            #expect((25...60).contains(document.installationsInPeriod), "\(document.installationsInPeriod)")
            #expect(document.newVsReturning.new == document.installationsInPeriod)
            #expect(document.technicians.reduce(0) { $0 + $1.installations } == document.installationsInPeriod)
            #expect(document.installationTimeDays != nil)
            // Complaints over the period and in the month running now; maintenance jobs done.
            #expect(document.complaintsInPeriod.received > 20)
            #expect(document.complaints.received > 0)
            #expect(document.maintenance.processed > 50 && document.technicians.contains { $0.maintenanceJobs > 0 })
            #expect(document.satisfaction.count > 300)
            // Nothing is resolved after today, and a new customer has no month before its installation.
            let late = try String(contentsOfFile: directory + "/csv/maintenance_data.csv", encoding: .utf8)
                .split(separator: "\n").dropFirst().filter { line in
                    let resolution = line.split(separator: ",", omittingEmptySubsequences: false)[2]
                    return resolution > "2026-03-20"
                }
            #expect(late.isEmpty)
            let rows = try CompanyRows(directory: directory + "/csv")
            let installed = Dictionary(uniqueKeysWithValues: rows.customers.map { ($0.id, monthKey($0.installed)) })
            #expect(rows.monthly.allSatisfy { $0.month >= installed[$0.customer]! || installed[$0.customer]! < 202_501 })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func sameSeedSameFilesOtherSeedOtherFiles() async throws {
        try await withTemporaryDirectory { directory in
            try CompanyGenerator(customers: 200, seed: 99).write(to: directory + "/a")
            try CompanyGenerator(customers: 200, seed: 99).write(to: directory + "/b")
            try CompanyGenerator(customers: 200, seed: 100).write(to: directory + "/c")
            for file in CompanyGenerator.files {
                let a = FileManager.default.contents(atPath: "\(directory)/a/\(file)")
                #expect(a == FileManager.default.contents(atPath: "\(directory)/b/\(file)"), "\(file) differs for the same seed")
                #expect(a != FileManager.default.contents(atPath: "\(directory)/c/\(file)"), "\(file) is the same for another seed")
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func distributionsMatchTheUseCase() async throws {
        try await withTemporaryDirectory { directory in
            let customers = 5_000
            try CompanyGenerator(customers: customers, seed: 3, year: 2024).write(to: directory)
            let rows = try CompanyRows(directory: directory)

            // Customers: ids 1…N, four regions evenly, installed over one year two years before the data.
            #expect(rows.customers.map(\.id) == Array(1...customers))
            for region in CompanyGenerator.regions {
                let share = Double(rows.customers.filter { $0.region == region }.count) / Double(customers)
                #expect(abs(share - 0.25) < 0.03, "region \(region): \(share)")
            }
            #expect(rows.customers.allSatisfy { $0.installed.hasPrefix("2022-") })
            #expect(Set(rows.customers.map { monthKey($0.installed) }).count == 12)

            // Monthly: twelve rows per customer, uniform 100–1000 kWh, 0.10–0.20 per kWh, 0.7/0.2/0.1.
            #expect(rows.monthly.count == customers * 12)
            #expect(Set(rows.monthly.map(\.month)) == Set((1...12).map { 202_400 + $0 }))
            #expect(Dictionary(grouping: rows.monthly, by: \.customer).values.allSatisfy { $0.count == 12 })
            #expect(rows.monthly.allSatisfy { $0.kwh >= 100 && $0.kwh <= 1000 })
            let meanKwh = rows.monthly.map(\.kwh).reduce(0, +) / Double(rows.monthly.count)
            #expect(abs(meanKwh - 550) < 5, "mean kWh \(meanKwh)")
            let rates = rows.monthly.map { $0.revenue / $0.kwh }
            #expect(rates.allSatisfy { $0 >= 0.0999 && $0 <= 0.2001 })
            #expect(abs(rates.reduce(0, +) / Double(rates.count) - 0.15) < 0.002)
            for (status, expected) in [("Good", 0.7), ("Fair", 0.2), ("Poor", 0.1)] {
                let share = Double(rows.monthly.filter { $0.status == status }.count) / Double(rows.monthly.count)
                #expect(abs(share - expected) < 0.01, "\(status): \(share)")
            }

            // Maintenance for 20 % of customers, resolved 1–9 days later by technicians 1–49.
            #expect(rows.maintenance.count == customers / 5)
            #expect(rows.maintenance.allSatisfy { (1...9).contains(Int(days(from: $0.request, to: $0.resolution))) })
            #expect(rows.maintenance.allSatisfy { (1...49).contains($0.technician) && $0.request.hasPrefix("2024-") })
            #expect(rows.maintenance.allSatisfy { (1...27).contains(Int($0.request.suffix(2))!) })

            // One feedback per customer, scores 1–5 evenly.
            #expect(rows.feedback.map(\.customer) == Array(1...customers))
            for score in 1...5 {
                let share = Double(rows.feedback.filter { $0.score == score }.count) / Double(customers)
                #expect(abs(share - 0.2) < 0.03, "score \(score): \(share)")
            }

            // Consistent extras: technicians 1–49, one installation per customer on its date, one bill per monthly row.
            #expect(rows.technicians.keys.sorted() == Array(1...49))
            let installedOn = Dictionary(uniqueKeysWithValues: rows.customers.map { ($0.id, $0.installed) })
            #expect(rows.installations.count == customers)
            #expect(rows.installations.allSatisfy { installedOn[$0.customer] == $0.installed && $0.request < $0.installed })
            #expect(rows.bills.count == rows.monthly.count)
            #expect(zip(rows.bills, rows.monthly).allSatisfy { $0.customer == $1.customer && $0.month == $1.month && $0.amount == $1.revenue })
            #expect(rows.bills.allSatisfy { $0.status == "paid" || $0.status == "unpaid" })
            #expect(rows.complaints.count == customers / 10)
            #expect(rows.complaints.allSatisfy { $0.resolved.isEmpty || $0.resolved >= $0.date })
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func seededGeneratorIsStableAndUniform() {
        var first = SeededGenerator(seed: 1)
        var second = SeededGenerator(seed: 1)
        let a = (0..<5).map { _ in first.next() }
        #expect(a == (0..<5).map { _ in second.next() })
        var random = SeededGenerator(seed: 5)
        var counts = [Int](repeating: 0, count: 4)
        for _ in 0..<40_000 { counts[random.below(4)] += 1 }
        #expect(counts.allSatisfy { abs($0 - 10_000) < 400 })
    }
}
