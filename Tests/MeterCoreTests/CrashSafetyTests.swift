import Foundation
import GRDB
import NIOConcurrencyHelpers
import Testing

@testable import MeterCore

/// Meters behind one connection that behave like real ones: they keep every unacknowledged
/// reading and resend it with the same seq after reconnecting, until all are acknowledged.
final class ResendingConcentrator: Sendable {
    let meters: [String]
    let readingsPerMeter: Int64
    private struct State {
        var produced: [String: Int64] = [:]
        var unacked: [String: [(seq: Int64, line: String)]] = [:]
        var acked: [String: Int64] = [:]
    }
    private let state = NIOLockedValueBox(State())
    private let kwh: @Sendable (String, Int64) -> Double

    init(meters: [String], readingsPerMeter: Int64, kwh: @escaping @Sendable (String, Int64) -> Double) {
        self.meters = meters
        self.readingsPerMeter = readingsPerMeter
        self.kwh = kwh
    }

    var isDone: Bool {
        self.state.withLockedValue { state in self.meters.allSatisfy { state.acked[$0] == self.readingsPerMeter } }
    }

    var acked: [String: Int64] { self.state.withLockedValue { $0.acked } }

    /// Sends until every reading is acknowledged, reconnecting to whatever port the daemon has now.
    func run(port: @escaping @Sendable () -> Int?) async throws {
        while !self.isDone {
            guard let port = port(), let connection = try? await LineClient(port: port) else {
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            let sender = Task {
                let backlog = self.state.withLockedValue { state in
                    self.meters.flatMap { state.unacked[$0] ?? [] }.map(\.line).joined()
                }
                if !backlog.isEmpty { try await connection.send(backlog) }
                while !Task.isCancelled {
                    let round = self.state.withLockedValue { state -> String in
                        var text = ""
                        for meter in self.meters where state.produced[meter, default: 0] < self.readingsPerMeter {
                            let seq = state.produced[meter, default: 0] + 1
                            state.produced[meter] = seq
                            let line = readingLine(meter: meter, seq: seq, kwh: self.kwh(meter, seq))
                            state.unacked[meter, default: []].append((seq, line))
                            text += line
                        }
                        return text
                    }
                    if !round.isEmpty { try await connection.send(round) }
                    try await Task.sleep(for: .milliseconds(15))
                }
            }
            while let text = try? await connection.readLine(timeout: .seconds(10)) {
                if case .ack(let meter, let seq) = DaemonLine(text) {
                    self.state.withLockedValue { state in
                        state.acked[meter] = max(state.acked[meter] ?? 0, seq)
                        state.unacked[meter]?.removeAll { $0.seq <= seq }
                    }
                }
                if self.isDone { break }
            }
            sender.cancel()
            _ = await sender.result
            await connection.close()
        }
    }
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct CrashSafetyTests {
    /// Both ways of writing aggregates: with their readings (the default), and deferred up to a
    /// second, where start-up recovers what the kill left unwritten.
    @Test(arguments: [[String](), ["--aggregate-interval-ms", "1000"]])
    func killedFiveTimesWhileAThousandMetersSendNothingAckedIsLostOrDoubled(arguments: [String]) async throws {
        try await withTemporaryDirectory { directory in
            let readingsPerMeter: Int64 = 250
            let kwh: @Sendable (String, Int64) -> Double = { meter, seq in Double((meter.hashValue & 0xFF) + Int(seq % 7)) / 64 }
            let fleet = (0..<100).map { connection in
                ResendingConcentrator(meters: (0..<10).map { "K\(connection)-\($0)" }, readingsPerMeter: readingsPerMeter, kwh: kwh)
            }
            let daemon = NIOLockedValueBox<DaemonProcess?>(try DaemonProcess(dataDirectory: directory, arguments: arguments))
            let portBox = PortBox(try await daemon.withLockedValue { $0! }.ingestPort())

            try await withThrowingTaskGroup(of: Void.self) { group in
                for concentrator in fleet {
                    group.addTask { try await concentrator.run(port: { portBox.port }) }
                }
                // Five SIGKILLs and one SIGTERM, each after the fleet made progress, each followed by a restart.
                for signal in [SIGKILL, SIGKILL, SIGTERM, SIGKILL, SIGKILL, SIGKILL] {
                    let before = fleet.reduce(0) { $0 + $1.acked.values.reduce(0, +) }
                    try await waitUntil(timeout: .seconds(60)) {
                        fleet.reduce(0) { $0 + $1.acked.values.reduce(0, +) } >= before + 2_000
                    }
                    let process = try #require(daemon.withLockedValue { $0 })
                    process.signal(signal)
                    let status = try await process.exitStatus()
                    if signal == SIGTERM { #expect(status == 0, "\(process.log)") }
                    portBox.port = nil
                    let restarted = try DaemonProcess(dataDirectory: directory, arguments: arguments)
                    daemon.withLockedValue { $0 = restarted }
                    do {
                        portBox.port = try await restarted.ingestPort()
                    } catch {
                        Issue.record("meterd did not come back after signal \(signal): \(restarted.log)")
                        throw error
                    }
                }
                try await group.waitForAll()
            }
            let last = try #require(daemon.withLockedValue { $0 })
            last.terminate()
            #expect(try await last.exitStatus() == 0)

            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let rows = try await database.pool.read { db in
                try Row.fetchAll(
                    db,
                    sql: """
                        SELECT meter.name AS name, meter.readings_total AS total, meter.hwm_seq AS hwm,
                               (SELECT count(*) FROM reading WHERE meter_id = meter.id) AS stored,
                               (SELECT count(DISTINCT seq) FROM reading WHERE meter_id = meter.id) AS distinctSeqs,
                               (SELECT sum(kwh) FROM reading WHERE meter_id = meter.id) AS readingKwh,
                               (SELECT sum(kwh) FROM meter_month WHERE meter_id = meter.id) AS monthKwh,
                               (SELECT sum(readings) FROM meter_month WHERE meter_id = meter.id) AS monthReadings
                        FROM meter
                        """
                ).map { row in
                    (
                        name: row["name"] as String, total: row["total"] as Int64, hwm: row["hwm"] as Int64, stored: row["stored"] as Int64,
                        distinct: row["distinctSeqs"] as Int64, readingKwh: row["readingKwh"] as Double,
                        monthKwh: row["monthKwh"] as Double, monthReadings: row["monthReadings"] as Int64
                    )
                }
            }
            #expect(rows.count == 1000)
            for row in rows {
                #expect(row.stored == readingsPerMeter && row.distinct == readingsPerMeter && row.hwm == readingsPerMeter, "\(row)")
                #expect(row.total == readingsPerMeter && row.monthReadings == readingsPerMeter, "\(row)")
                let expected = (1...readingsPerMeter).reduce(0.0) { $0 + kwh(row.name, $1) }
                #expect(abs(row.readingKwh - expected) < 1e-6, "\(row)")
                #expect(abs(row.monthKwh - row.readingKwh) < 1e-6, "\(row)")
            }
        }
    }
}

/// The port of whichever daemon runs now; `nil` while it restarts.
final class PortBox: Sendable {
    private let value: NIOLockedValueBox<Int?>
    init(_ port: Int?) { self.value = NIOLockedValueBox(port) }
    var port: Int? {
        get { self.value.withLockedValue { $0 } }
        set { self.value.withLockedValue { $0 = newValue } }
    }
}
