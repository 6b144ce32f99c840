import Foundation
import GRDB
import Logging
import ServiceLifecycle
import Testing

@testable import MeterCore
@testable import SimulatorCore

@Suite struct KPISnapshotTests {
    @Test(.timeLimit(.minutes(1)))
    func snapshotsGoAtomicallyToKpiJsonAndKeepTheirHistory() async throws {
        try await withTemporaryDirectory { directory in
            try CompanyGenerator(customers: 30, seed: 1).write(to: directory + "/csv")
            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            #expect(try CompanyImporter.importDirectory(directory + "/csv", database: database).succeeded)
            let engine = offlineEngine(database)
            let snapshots = SnapshotService(
                engine: engine, writer: try WriterAccess.direct(SQLiteMeterStore(database: database)), path: directory + "/kpi.json",
                interval: .seconds(3600), history: 2, logger: testLogger)
            let now = RFC3339.parseMilliseconds("2023-12-15T10:00:00Z")!
            for offset in 0..<3 { #expect(try await snapshots.snapshot(nowMs: now + Int64(offset)) == directory + "/kpi.json") }
            let document = try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: directory + "/kpi.json")!) as! [String: Any]
            #expect(Set(document.keys) == kpiKeys)
            let snapshot = try JSONDecoder().decode(KPIDocument.self, from: FileManager.default.contents(atPath: directory + "/kpi.json")!)
            #expect(snapshot.period == KPIDocument.Period(from: "2023-01", to: "2023-12"))
            #expect(snapshot.totalCustomers == 30)
            let stored = try await database.pool.read { db in try String.fetchOne(db, sql: "SELECT document FROM kpi_snapshot ORDER BY id DESC") }
            #expect(try JSONDecoder().decode(KPIDocument.self, from: Data(try #require(stored).utf8)) == snapshot)
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.contains(".tmp") }.isEmpty)
            let rows = try await database.pool.read { db in try Int64.fetchAll(db, sql: "SELECT generated_ms FROM kpi_snapshot ORDER BY id") }
            #expect(rows == [now + 1, now + 2])
        }
    }

    /// meterd itself: the snapshot service writes kpi.json on start and on demand, next to ports.json.
    @Test(.timeLimit(.minutes(1)))
    func theDaemonWritesSnapshots() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.dataDirectory = directory
            configuration.ingest = ListenAddress(host: "127.0.0.1", port: 0)
            configuration.http = ListenAddress(host: "127.0.0.1", port: 0)  // not the default 8080, which anything may hold
            let daemon = try MeterDaemon(configuration: configuration, logger: testLogger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await daemon.run() }
                try await waitUntil { FileManager.default.fileExists(atPath: directory + "/kpi.json") }
                try FileManager.default.removeItem(atPath: directory + "/kpi.json")
                #expect(try await daemon.snapshots.snapshot() == directory + "/kpi.json")
                let document =
                    try JSONSerialization.jsonObject(with: FileManager.default.contents(atPath: directory + "/kpi.json")!) as! [String: Any]
                #expect(Set(document.keys) == kpiKeys)
                tasks.cancelAll()
                try? await tasks.waitForAll()
            }
        }
    }
}
