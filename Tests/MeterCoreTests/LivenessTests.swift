import Foundation
import GRDB
import Logging
import ServiceLifecycle
import Testing

@testable import MeterCore

/// Collects log messages so tests can see the transitions were logged.
final class CapturedLogs: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [(message: String, metadata: Logger.Metadata)] = []

    var logger: Logger {
        Logger(label: "test") { _ in CapturingHandler(sink: self) }
    }

    /// Every entry so far, oldest first.
    var all: [(message: String, metadata: Logger.Metadata)] { self.lock.withLock { self.entries } }

    func append(_ message: String, _ metadata: Logger.Metadata) { self.lock.withLock { self.entries.append((message, metadata)) } }

    func meters(_ message: String) -> [String] {
        self.lock.withLock { self.entries.filter { $0.message == message }.compactMap { $0.metadata["meter.id"]?.description } }
    }

    struct CapturingHandler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            self.sink.append(event.message.description, self.metadata.merging(event.metadata ?? [:]) { $1 })
        }
    }
}

@Suite struct LivenessTests {
    @Test(.timeLimit(.minutes(1)))
    func meterGoesInactiveWithTheTimeItWentSilentAndComesBack() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(directory, "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,South,2023-01-05"])
            try await IngestHarness.with(directory: directory) { harness in
                _ = try await harness.pipeline.perform { writer in try CompanyImporter.importDirectory(directory, into: writer) }
                let logs = CapturedLogs()
                let start = WallClock.nowMs()
                let monitor = LivenessMonitor(
                    store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 60,
                    logger: logs.logger, nowMs: start)
                let engine = offlineEngine(harness.database)
                let client = try await LineClient(port: harness.port)
                try await client.send(readingLine(meter: "MTR-000001", seq: 1))
                #expect(try await client.readLine() == #"{"meter":"MTR-000001","ack":1}"#)
                let received = try await harness.database.pool.read { db in
                    try Int64.fetchOne(db, sql: "SELECT last_received_ms FROM meter WHERE name = 'MTR-000001'")
                }

                // Within the threshold nothing changes; the never-heard meter counts as inactive all the same.
                #expect(try await monitor.check(nowMs: start + 1_000) == LivenessTransitions())
                var meters = object(try await kpiDocument(engine, engine.defaultPeriod())["meters"])
                #expect(number(meters["active"]) == 1 && number(meters["inactive"]) == 1)

                // Past it both are flagged: the silent one since its last reading, the never-heard one since the start.
                let later = start + 120_000
                #expect(try await monitor.check(nowMs: later) == LivenessTransitions(wentInactive: ["MTR-000001", "MTR-000002"]))
                #expect(
                    try await harness.store.inactiveMeters(region: nil, limit: 10_000)
                        == [
                            InactiveMeter(meter: "MTR-000001", customerID: 1, region: "North", silentSinceMs: received!, lastReceivedMs: received),
                            InactiveMeter(meter: "MTR-000002", customerID: 2, region: "South", silentSinceMs: start, lastReceivedMs: nil),
                        ].sorted { $0.silentSinceMs! < $1.silentSinceMs! })
                #expect(logs.meters("Meter inactive").sorted() == ["MTR-000001", "MTR-000002"])
                #expect(try await monitor.check(nowMs: later + 1_000) == LivenessTransitions())
                meters = object(try await kpiDocument(engine, engine.defaultPeriod())["meters"])
                #expect(number(meters["active"]) == 0 && number(meters["inactive"]) == 2)

                // Its next reading clears the flag (the writer does); the next check logs the way back.
                try await client.send(readingLine(meter: "MTR-000001", seq: 2))
                #expect(try await client.readLine() == #"{"meter":"MTR-000001","ack":2}"#)
                await client.close()
                #expect(try await monitor.check() == LivenessTransitions(cameBack: ["MTR-000001"]))
                #expect(logs.meters("Meter active again") == ["MTR-000001"])
                #expect(try await harness.store.inactiveMeters(region: nil, limit: 10_000).map(\.meter) == ["MTR-000002"])
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func inactiveMetersAreCountedPerRegionFromTheIndexes() async throws {
        try await withTemporaryDirectory { directory in
            try writeCSV(
                directory, "customer_data.csv",
                ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,North,2023-01-05", "3,North,2023-01-05", "4,South,2023-01-05"])
            try await IngestHarness.with(directory: directory) { harness in
                _ = try await harness.pipeline.perform { writer in try CompanyImporter.importDirectory(directory, into: writer) }
                let start = WallClock.nowMs()
                let client = try await LineClient(port: harness.port)
                for meter in ["MTR-000001", "MTR-000002"] {
                    try await client.send(readingLine(meter: meter, seq: 1))
                    #expect(try await client.readLine() == #"{"meter":"\#(meter)","ack":1}"#)
                }
                await client.close()
                // Never heard: 3 (North) and 4 (South). Reported: 1 and 2 (North).
                #expect(try await harness.store.inactiveMeterCount(region: nil) == 2)
                #expect(try await harness.store.inactiveMeterCount(region: "North") == 1)
                #expect(try await harness.store.inactiveMeterCount(region: "South") == 1)
                #expect(try await harness.store.inactiveMeterCount(region: "East") == 0)

                // A sweep long after: 1 and 2 go silent, 3 and 4 move from never-reported to flagged; each counts once.
                let monitor = LivenessMonitor(
                    store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 60, logger: testLogger, nowMs: start)
                #expect(try await monitor.check(nowMs: start + 3_600_000).wentInactive.count == 4)
                #expect(try await harness.store.inactiveMeterCount(region: nil) == 4)
                #expect(try await harness.store.inactiveMeterCount(region: "North") == 3)
                #expect(try await harness.store.inactiveMeterCount(region: "South") == 1)

                // The never-reported count visits no meter rows: an index holds exactly those meters.
                let plans = try await harness.database.pool.read { db in
                    try ["", " AND region = 'North'"].map { filter in
                        try Row.fetchAll(
                            db,
                            sql: "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM meter WHERE last_received_ms IS NULL AND inactive_since_ms IS NULL" + filter
                        ).map { $0["detail"] as String }.joined(separator: "; ")
                    }
                }
                #expect(plans[0].contains("COVERING INDEX meter_never_reported") || plans[0].contains("USING INDEX meter_never_reported"))
                #expect(plans[1].contains("meter_never_reported_by_region"))
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func theServiceChecksOnItsOwn() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let monitor = LivenessMonitor(
                    store: harness.store, writer: .pipeline(harness.pipeline), inactiveAfterSeconds: 1,
                    interval: .milliseconds(100), logger: testLogger)
                let group = ServiceGroup(services: [monitor], logger: testLogger)
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask { try await group.run() }
                    let client = try await LineClient(port: harness.port)
                    try await client.send(readingLine(meter: "m-live", seq: 1))
                    #expect(try await client.readLine() == #"{"meter":"m-live","ack":1}"#)
                    try await waitUntil { try await harness.store.inactiveMeters(region: nil, limit: 10_000).map(\.meter) == ["m-live"] }
                    // The service stops before the meter speaks again: with a one-second threshold a
                    // loaded machine could otherwise let the meter fall silent again before the check below.
                    await group.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                    try await client.send(readingLine(meter: "m-live", seq: 2))
                    #expect(try await client.readLine() == #"{"meter":"m-live","ack":2}"#)
                    #expect(try await harness.store.inactiveMeters(region: nil, limit: 10_000).isEmpty)
                    await client.close()
                }
            }
        }
    }
}
