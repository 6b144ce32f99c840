import Foundation
import GRDB
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// Filter values reach SQL only as bound parameters: hostile ones are just names nobody has.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct InjectionTests {
    static let hostile = [
        "North' OR '1'='1",
        "North'; DROP TABLE meter; --",
        "\" OR 1=1 --",
        "x') UNION SELECT name, sql FROM sqlite_master --",
    ]

    @Test func hostileFiltersThroughMeterctlChangeNothingAndMatchNothing() async throws {
        try await withTemporaryDirectory { directory in
            let csv = directory + "/csv"
            try CompanyGenerator(customers: 40, seed: 3, year: 2023).write(to: csv)
            let data = directory + "/data"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            _ = try CompanyImporter.importDirectory(csv, database: MeterDatabase(path: data + "/meterd.sqlite"))
            let meterd = try MeterdUnderTest.start(dataDirectory: data)
            defer { meterd.process.stop() }
            _ = try await meterd.ports()
            let socket = meterd.statusSocket
            let before = try await MeterCtlTests.meterctlAsync(["--socket", socket, "kpi", "--json", "--from", "2023-01", "--to", "2023-12"])
            #expect(try JSONDecoder().decode(KPIDocument.self, from: Data(before.out.utf8)).totalCustomers == 40)

            for value in Self.hostile {
                let kpi = try await MeterCtlTests.meterctlAsync([
                    "--socket", socket, "kpi", "--json", "--from", "2023-01", "--to", "2023-12",
                    "--region", value,
                ])
                if kpi.status == 0 {
                    let document = try JSONDecoder().decode(KPIDocument.self, from: Data(kpi.out.utf8))
                    #expect(document.totalCustomers == 0, "region \(value) matched customers")
                    #expect(document.region == value)
                } else {
                    #expect(kpi.err.hasPrefix("meterctl: "), "\(kpi.err)")
                }
                let meter = try await MeterCtlTests.meterctlAsync(["--socket", socket, "meter", value.replacingOccurrences(of: " ", with: "_")])
                #expect(meter.status == 1)
                #expect(meter.err.hasPrefix("meterctl: unknown meter"))
            }
            // Everything is still there.
            let after = try await MeterCtlTests.meterctlAsync(["--socket", socket, "kpi", "--json", "--from", "2023-01", "--to", "2023-12"])
            #expect(try JSONDecoder().decode(KPIDocument.self, from: Data(after.out.utf8)).totalCustomers == 40)
            #expect(try await meterd.terminate() == 0)
            let tables = try await DatabaseQueue(path: data + "/meterd.sqlite").read { db in
                try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('meter', 'customer', 'reading')")
            }
            #expect(Set(tables) == ["meter", "customer", "reading"])
        }
    }
}
