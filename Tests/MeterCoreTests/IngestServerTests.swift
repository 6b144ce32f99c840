import Foundation
import GRDB
import NIOCore
import Synchronization
import Testing

@testable import MeterCore

/// A line the daemon sent, decoded.
enum DaemonLine: Hashable {
    case ack(meter: String, seq: Int64)
    case error(code: String, line: Int)
    case busy

    init?(_ text: String) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return nil }
        if let meter = object["meter"] as? String, let seq = object["ack"] as? Int64 {
            self = .ack(meter: meter, seq: seq)
        } else if let code = object["error"] as? String, let line = object["line"] as? Int, object["detail"] is String {
            self = .error(code: code, line: line)
        } else if object["busy"] as? Bool == true, object["retry_after_ms"] is Int {
            self = .busy
        } else {
            return nil
        }
    }
}

extension LineClient {
    /// Reads lines until `done` says it has seen enough.
    func collect(until done: ([DaemonLine]) -> Bool) async throws -> [DaemonLine] {
        var lines: [DaemonLine] = []
        while !done(lines) {
            guard let text = try await self.readLine() else { break }
            lines.append(try #require(DaemonLine(text), "unexpected line \(text)"))
        }
        return lines
    }
}

func lastAck(_ lines: [DaemonLine], meter: String) -> Int64? {
    lines.compactMap { if case .ack(meter, let seq) = $0 { seq } else { nil } }.last
}

@Suite(.timeLimit(.minutes(2))) struct IngestServerTests {
    @Test func acknowledgesEveryReadingOnceAndOnlyAfterItIsCommitted() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let clients = 40, metersPerClient = 5, readingsPerMeter = 20
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for client in 0..<clients {
                        group.addTask {
                            let connection = try await LineClient(port: harness.port)
                            let meters = (0..<metersPerClient).map { "C\(client)-M\($0)" }
                            // Burst in chunks so several commits are involved.
                            for chunk in stride(from: 1, through: readingsPerMeter, by: 5) {
                                var text = ""
                                for seq in chunk..<chunk + 5 {
                                    for meter in meters { text += readingLine(meter: meter, seq: Int64(seq), kwh: Double(seq)) }
                                }
                                try await connection.send(text)
                            }
                            var acked: [String: Int64] = [:]
                            while acked.values.filter({ $0 == Int64(readingsPerMeter) }).count < metersPerClient {
                                let text = try #require(try await connection.readLine())
                                guard case .ack(let meter, let seq) = try #require(DaemonLine(text)) else {
                                    Issue.record("unexpected line \(text)")
                                    return
                                }
                                // Exactly once: every ack moves the meter's mark forward.
                                #expect(seq > acked[meter, default: 0], "ack \(seq) for \(meter) repeats or goes back")
                                acked[meter] = seq
                                // Only after commit: everything up to the ack is already in the database.
                                let stored = try await harness.database.pool.read { db in
                                    try Int.fetchOne(
                                        db,
                                        sql: """
                                            SELECT count(*) FROM reading JOIN meter ON meter.id = reading.meter_id
                                            WHERE meter.name = ? AND reading.seq <= ?
                                            """, arguments: [meter, seq])!
                                }
                                #expect(stored == Int(seq))
                            }
                            await connection.close()
                        }
                    }
                    try await group.waitForAll()
                }
                let (count, kwh) = try await harness.database.pool.read { db in
                    (try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!, try Double.fetchOne(db, sql: "SELECT sum(kwh) FROM meter_month")!)
                }
                #expect(count == clients * metersPerClient * readingsPerMeter)
                #expect(kwh == Double(clients * metersPerClient * (readingsPerMeter * (readingsPerMeter + 1) / 2)))
                #expect(harness.pipeline.statistics.stored.load(ordering: .relaxed) == count)
            }
        }
    }

    @Test func aResendAfterReconnectIsAckedButStoredOnce() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let first = try await LineClient(port: harness.port)
                try await first.send((1...10).map { readingLine(meter: "MTR-9", seq: $0, kwh: 1) }.joined())
                _ = try await first.collect { lastAck($0, meter: "MTR-9") == 10 }
                await first.close()

                // The meter lost the acks of 6...10 with the connection and resends them with 11...15.
                let second = try await LineClient(port: harness.port)
                try await second.send((6...15).map { readingLine(meter: "MTR-9", seq: $0, kwh: 1) }.joined())
                _ = try await second.collect { lastAck($0, meter: "MTR-9") == 15 }
                await second.close()

                let (rows, distinct, kwh) = try await harness.database.pool.read { db in
                    (
                        try Int.fetchOne(db, sql: "SELECT count(*) FROM reading")!,
                        try Int.fetchOne(db, sql: "SELECT count(DISTINCT seq) FROM reading")!,
                        try Double.fetchOne(db, sql: "SELECT sum(kwh) FROM meter_month")!
                    )
                }
                #expect(rows == 15)
                #expect(distinct == 15)
                #expect(kwh == 15)
                #expect(harness.pipeline.statistics.duplicates.load(ordering: .relaxed) == 5)
            }
        }
    }

    @Test func aMalformedLineIsAnsweredAndQuarantinedWhileTheOthersAreStored() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                try await client.send(
                    readingLine(meter: "M", seq: 1)
                        + "{\"meter\":\"M\",\"seq\":2,\n"
                        + #"{"meter":"M","seq":3,"ts":"2026-11-29T10:15:00Z"}"# + "\n"
                        + #"{"meter":"M","seq":4,"ts":"2026-11-29T10:15:00Z","kwh":-4}"# + "\n"
                        + readingLine(meter: "M", seq: 5))
                let lines = try await client.collect { lastAck($0, meter: "M") == 5 && $0.count >= 4 }
                #expect(
                    Set(lines) == [
                        .error(code: "invalid_json", line: 2), .error(code: "missing_field", line: 3),
                        .error(code: "invalid_field", line: 4), .ack(meter: "M", seq: 5),
                    ]
                        || Set(lines) == [
                            .error(code: "invalid_json", line: 2), .error(code: "missing_field", line: 3),
                            .error(code: "invalid_field", line: 4), .ack(meter: "M", seq: 1), .ack(meter: "M", seq: 5),
                        ])
                await client.close()
                let (stored, quarantined) = try await harness.database.pool.read { db in
                    (
                        try Int64.fetchAll(db, sql: "SELECT seq FROM reading ORDER BY seq"),
                        try Row.fetchAll(db, sql: "SELECT line, code, detail, raw FROM quarantine ORDER BY line")
                            .map { "\($0["line"] as Int) \($0["code"] as String) \(String(decoding: $0["raw"] as Data, as: UTF8.self))" }
                    )
                }
                #expect(stored == [1, 5])
                #expect(
                    quarantined == [
                        #"2 invalid_json {"meter":"M","seq":2,"#,
                        #"3 missing_field {"meter":"M","seq":3,"ts":"2026-11-29T10:15:00Z"}"#,
                        #"4 invalid_field {"meter":"M","seq":4,"ts":"2026-11-29T10:15:00Z","kwh":-4}"#,
                    ])
            }
        }
    }

    @Test func anOverlongLineIsRejectedWithoutLosingItsNeighbours() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.limits.maximumLineLength = 200
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let client = try await LineClient(port: harness.port)
                let padded = #"{"meter":"M","seq":2,"ts":"2026-11-29T10:15:00Z","kwh":1,"pad":""# + String(repeating: "x", count: 300) + "\"}\n"
                // Line 2 arrives whole; line 4 trickles in without a newline for a while.
                try await client.send(readingLine(meter: "M", seq: 1) + padded + readingLine(meter: "M", seq: 3))
                try await client.send(String(repeating: "y", count: 150))
                try await client.send(String(repeating: "y", count: 150))
                try await client.send(String(repeating: "y", count: 150) + "\n" + readingLine(meter: "M", seq: 5))
                let lines = try await client.collect { lastAck($0, meter: "M") == 5 }
                #expect(lines.contains(.error(code: "line_too_long", line: 2)))
                #expect(lines.contains(.error(code: "line_too_long", line: 4)))
                #expect(lines.filter { if case .error = $0 { true } else { false } }.count == 2)
                await client.close()
                let stored = try await harness.database.pool.read { db in try Int64.fetchAll(db, sql: "SELECT seq FROM reading ORDER BY seq") }
                #expect(stored == [1, 3, 5])
                let codes = try await harness.database.pool.read { db in try String.fetchAll(db, sql: "SELECT code FROM quarantine") }
                #expect(codes == ["line_too_long", "line_too_long"])
            }
        }
    }

    @Test func readingsSentOneByteAtATimeWithCRLFAreStored() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                let text = (1...3).map { readingLine(meter: "SLOW", seq: $0).replacingOccurrences(of: "\n", with: "\r\n") }.joined()
                for byte in text.utf8 { try await client.send(bytes: [byte]) }
                _ = try await client.collect { lastAck($0, meter: "SLOW") == 3 }
                await client.close()
                let stored = try await harness.database.pool.read { db in try Int64.fetchAll(db, sql: "SELECT seq FROM reading ORDER BY seq") }
                #expect(stored == [1, 2, 3])
            }
        }
    }

    @Test func aReadingFromTheFutureIsAClockSkewError() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                try await client.send(readingLine(meter: "F", seq: 1, timestampMs: WallClock.nowMs() + 3_600_000) + readingLine(meter: "F", seq: 2))
                let lines = try await client.collect { lastAck($0, meter: "F") == 2 }
                #expect(lines.first == .error(code: "clock_skew", line: 1))
                await client.close()
                #expect(harness.pipeline.statistics.rejects(.clockSkew) == 1)
            }
        }
    }

    /// A meter's clock reset to year 0 sends nothing meterd's calendars and latency sums can hold;
    /// one reset decades back (1970) is stored, its latency counted as at most 365 days.
    @Test func aTimestampBefore1970IsRejectedAndALateOnesLatencyIsCapped() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                try await client.send(
                    #"{"meter":"Z","seq":1,"ts":"0000-01-01T00:00:00Z","kwh":0.1}"# + "\n"
                        + #"{"meter":"Z","seq":2,"ts":"1969-12-31T23:59:59.999Z","kwh":0.1}"# + "\n"
                        + #"{"meter":"Z","seq":3,"ts":"0000-01-01T00:00:00+23:59","kwh":0.1}"# + "\n"
                        + "  \t\r\n"  // a blank line, skipped like an empty one
                        + #"{"meter":"Z","seq":4,"ts":"1970-01-01T00:00:00Z","kwh":0.1}"# + "\n")
                let lines = try await client.collect { lastAck($0, meter: "Z") == 4 }
                #expect(
                    Set(lines) == [
                        .error(code: "invalid_field", line: 1), .error(code: "invalid_field", line: 2),
                        .error(code: "invalid_field", line: 3), .ack(meter: "Z", seq: 4),
                    ])
                await client.close()
                let (stored, latencyMax, latencySum) = try await harness.database.pool.read { db in
                    (
                        try Int64.fetchAll(db, sql: "SELECT seq FROM reading ORDER BY seq"),
                        try Int64.fetchOne(db, sql: "SELECT max(latency_max_ms) FROM meter_month"),
                        try Int64.fetchOne(db, sql: "SELECT sum(latency_sum_ms) FROM meter_month")
                    )
                }
                #expect(stored == [4])
                #expect(latencyMax == MeteringRules.maximumLatencyMs)
                #expect(latencySum == MeteringRules.maximumLatencyMs)
                #expect(harness.pipeline.statistics.rejects(.invalidField) == 3)
            }
        }
    }

    /// A database written before the cap may hold latency sums that overflowed into REALs beyond
    /// any `Int64`; reading that meter's months and the latency KPI must not stop meterd.
    @Test func latencySumsThatOverflowedBeforeTheCapStillRead() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                try await client.send(readingLine(meter: "Z", seq: 1))
                _ = try await client.collect { lastAck($0, meter: "Z") == 1 }
                await client.close()
                try await harness.database.pool.write { db in
                    try db.execute(sql: "UPDATE meter_month SET latency_sum_ms = 1.5e20, latency_max_ms = 1.0e19")
                    // Two integer sums whose total no `Int64` holds: SQL's SUM would fail on them.
                    try db.execute(sql: "UPDATE latency_month SET sum_ms = 9000000000000000000")
                    try db.execute(
                        sql: """
                            INSERT INTO latency_month (month, region, bucket, count, sum_ms)
                            SELECT month, region || ' East', bucket, 1, 9000000000000000000 FROM latency_month
                            """)
                }
                let store = SQLiteMeterStore(database: harness.database)
                let months = try await store.meterMonths(named: "Z")
                #expect(months.map(\.latencySumMs) == [Int64.max])
                #expect(months.map(\.latencyMaxMs) == [Int64.max])
                let month = try #require(months.first?.month)
                let buckets = try await store.latencyBuckets(from: month, to: month, region: nil)
                #expect(buckets.map(\.count) == [2])
                #expect(buckets.map(\.sumMs) == [1.8e19])
            }
        }
    }

    /// A meter that half-closes right after its last line, without the newline, gets that line
    /// answered (acked, or rejected and quarantined) before meterd closes.
    @Test func aLastLineWithoutItsNewlineIsAnsweredBeforeTheClose() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                func finishWithout(_ text: String, meter: String) async throws -> [DaemonLine] {
                    let client = try await LineClient(port: harness.port)
                    try await client.send(readingLine(meter: meter, seq: 1) + text)
                    try await client.finishSending()
                    var lines: [DaemonLine] = []
                    while let line = try await client.readLine(timeout: .seconds(60)) { lines.append(try #require(DaemonLine(line))) }
                    await client.close()
                    return lines
                }
                let good = try await finishWithout(String(readingLine(meter: "L", seq: 2).dropLast()), meter: "L")
                #expect(lastAck(good, meter: "L") == 2, "\(good)")
                let bad = try await finishWithout(#"{"meter":"Q","seq":2,"#, meter: "Q")
                #expect(bad.contains(.error(code: "invalid_json", line: 2)), "\(bad)")
                #expect(lastAck(bad, meter: "Q") == 1)
                let (stored, quarantined) = try await harness.database.pool.read { db in
                    (
                        try String.fetchAll(db, sql: "SELECT m.name || ':' || r.seq FROM reading r JOIN meter m ON m.id = r.meter_id ORDER BY 1"),
                        try Int.fetchAll(db, sql: "SELECT line FROM quarantine")
                    )
                }
                #expect(stored == ["L:1", "L:2", "Q:1"])
                #expect(quarantined == [2])
            }
        }
    }

    @Test func aFullQueueSaysBusyAndSlowsTheMeterWithoutDroppingAnything() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.pipeline = PipelineConfiguration(queueCapacity: 20, commitInterval: .milliseconds(30), maximumBatch: 50)
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let client = try await LineClient(port: harness.port)
                let total: Int64 = 3000
                try await client.send((1...total).map { readingLine(meter: "B", seq: $0) }.joined())
                let lines = try await client.collect { lastAck($0, meter: "B") == total }
                #expect(lines.contains(.busy))
                #expect(harness.pipeline.statistics.busySignals.load(ordering: .relaxed) >= 1)
                await client.close()
                let stored = try await harness.database.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(DISTINCT seq) FROM reading")! }
                #expect(stored == Int(total))
                #expect(harness.pipeline.queueDepth == 0)
            }
        }
    }

    @Test func aMeterThatStopsSendingGetsItsAcksBeforeTheConnectionCloses() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let client = try await LineClient(port: harness.port)
                try await client.send((1...50).map { readingLine(meter: "H", seq: $0) }.joined())
                try await client.finishSending()
                var lines: [DaemonLine] = []
                // Patient: with the whole suite in parallel on two cores, commits (fsync) have
                // been seen to stall for 20 s. What counts is every ack, then the close.
                while let text = try await client.readLine(timeout: .seconds(60)) { lines.append(try #require(DaemonLine(text))) }
                #expect(lastAck(lines, meter: "H") == 50)
                await client.close()
            }
        }
    }

    @Test func unknownMetersGetUnknownMeterWhenRejected() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.unknownMeters = .reject
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let client = try await LineClient(port: harness.port)
                // Spacing, key order and an unknown key that a re-serialised reading would lose.
                let sent = #"{ "seq":1, "meter":"NOBODY","ts":"2026-01-01T00:00:00Z","kwh":0.50,"firmware":"4.2" }"#
                try await client.send(sent + "\r\n")
                let lines = try await client.collect { !$0.isEmpty }
                #expect(lines == [.error(code: "unknown_meter", line: 1)])
                await client.close()
                #expect(harness.pipeline.statistics.rejects(.unknownMeter) == 1)
                // The quarantine keeps the bytes the meter sent, not a re-serialised reading.
                let raw = try await harness.database.pool.read { db in try Data.fetchOne(db, sql: "SELECT raw FROM quarantine") }
                #expect(raw.map { String(decoding: $0, as: UTF8.self) } == sent)
            }
        }
    }
}

@Suite(.timeLimit(.minutes(1))) struct ConnectionLimitTests {
    @Test func connectionsBeyondTheLimitAreToldSoAndClosed() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.maximumConnections = 2
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                let first = try await LineClient(port: harness.port)
                let second = try await LineClient(port: harness.port)
                try await waitUntil { harness.pipeline.statistics.connections.load(ordering: .relaxed) == 2 }
                let third = try await LineClient(port: harness.port)
                #expect(try await third.readLine() == #"{"error":"too_many_connections"}"#)
                #expect(try await third.readLine() == nil)
                // The admitted meters are unaffected.
                try await first.send(readingLine(meter: "L1", seq: 1))
                #expect(try await first.collect { !$0.isEmpty } == [.ack(meter: "L1", seq: 1)])
                await third.close()
                await second.close()
                await first.close()
            }
        }
    }

    @Test func aConnectionThatSendsNothingIsClosedAfterTheIdleTimeout() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            // Seconds, not less: on a loaded machine a test task may wait that long between a
            // connection's accept and its first write.
            configuration.limits.idleTimeout = .seconds(4)
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                // The talker keeps sending more often than the timeout, for longer than it, from its
                // first moment (the other connection may take seconds to open) and stays connected.
                let talker = try await LineClient(port: harness.port)
                async let talking: Void = talker.sendPaced((1...45).map { readingLine(meter: "T", seq: Int64($0)) }, every: .milliseconds(100))
                let started = ContinuousClock.now
                let silent = try await LineClient(port: harness.port)
                try await talking
                let acks = try await talker.collect { lastAck($0, meter: "T") == 45 }
                #expect(acks.allSatisfy { if case .ack = $0 { true } else { false } })
                #expect(try await silent.readLine() == nil)
                #expect(ContinuousClock.now - started >= .seconds(4))
                // and not long after it: the server's sweep looks every half second at this timeout
                #expect(ContinuousClock.now - started < .seconds(8))
                await silent.close()
                await talker.close()
            }
        }
    }

    @Test func aConnectionWaitingForMeterdIsNotClosedAsIdle() async throws {
        try await withTemporaryDirectory { directory in
            var configuration = DaemonConfiguration()
            configuration.limits.idleTimeout = .seconds(2)
            configuration.pipeline.queueCapacity = 10
            try await IngestHarness.with(directory: directory, configuration: configuration) { harness in
                // The writer cannot commit while another connection holds the database (SQLite's
                // busy timeout, 10 s, is longer than the wait below).
                var sqlite = Configuration()
                sqlite.allowsUnsafeTransactions = true
                let blocker = try DatabaseQueue(path: directory + "/meterd.sqlite", configuration: sqlite)
                try await blocker.writeWithoutTransaction { db in try db.execute(sql: "BEGIN EXCLUSIVE") }
                // One meter waits for the commit of its reading, the other, with more readings than
                // the queue holds, is paused as well.
                let waiting = try await LineClient(port: harness.port)
                let paused = try await LineClient(port: harness.port)
                try await waiting.send(readingLine(meter: "W", seq: 1) + "\n")
                try await paused.send((1...40).map { readingLine(meter: "P", seq: Int64($0)) + "\n" }.joined())
                try await Task.sleep(for: .seconds(6))  // three idle timeouts
                try await blocker.writeWithoutTransaction { db in try db.execute(sql: "ROLLBACK") }

                let waited = try await waiting.collect { lastAck($0, meter: "W") == 1 }
                #expect(lastAck(waited, meter: "W") == 1)
                let acks = try await paused.collect { lastAck($0, meter: "P") == 40 }
                #expect(lastAck(acks, meter: "P") == 40)  // an ack covers its meter's readings up to it
                // Silent once answered: closed after the idle timeout as any other.
                for client in [waiting, paused] {
                    while try await client.readLine(timeout: .seconds(10)) != nil {}
                }
                await paused.close()
                await waiting.close()
            }
        }
    }
}
