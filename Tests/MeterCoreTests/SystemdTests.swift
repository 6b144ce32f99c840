#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GRDB
import Logging
import Testing

@testable import MeterCore

/// systemd integration of the real `meterd` binary: sd_notify, watchdog, socket activation, journald.
@Suite(.serialized)
struct SystemdTests {
    @Test(.timeLimit(.minutes(1)))
    func notifiesReadyStatusWatchdogAndStopping() async throws {
        try await withTemporaryDirectory { directory in
            // Given a notify socket and a 1 s watchdog, as systemd would set them up.
            let notify = try DatagramReceiver(path: directory + "/notify.sock")
            defer { notify.close() }
            let meterd = try MeterdUnderTest.start(
                dataDirectory: directory + "/data",
                environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"])
            defer { meterd.process.stop() }

            // READY=1 arrives, and only once the listeners are bound.
            try await waitUntil { notify.messages.contains { $0.hasPrefix("READY=1") } }
            let ports = try await meterd.ports()
            #expect(FileManager.default.fileExists(atPath: meterd.statusSocket))
            let ready = try #require(notify.messages.first { $0.hasPrefix("READY=1") })
            #expect(ready.contains("STATUS="))
            // READY=1 does not wait for the KPI store's first load; the fleet's counts follow in the next STATUS=.
            #expect(ready.contains("fleet figures loading"), "\(ready)")
            #expect(notify.messages.firstIndex { $0 == "WATCHDOG=1" } ?? .max > notify.messages.firstIndex(of: ready)!)

            // WATCHDOG=1 keeps coming while the idle writer is healthy.
            try await waitUntil { notify.messages.filter { $0 == "WATCHDOG=1" }.count >= 3 }

            // STATUS= is refreshed every few seconds with live figures.
            let client = try await LineClient(port: ports.ingest)
            try await client.send(readingLine(meter: "MTR-N1", seq: 1) + "\n")
            #expect(try await client.readLine() == #"{"meter":"MTR-N1","ack":1}"#)
            try await waitUntil(timeout: .seconds(15)) {
                notify.messages.contains { $0.hasPrefix("STATUS=") && $0.contains("1 connections") }
            }
            let status = try #require(notify.messages.last { $0.hasPrefix("STATUS=") })
            #expect(status.contains("readings/s"))
            #expect(status.contains("inactive meters"))
            await client.close()

            // SIGTERM: STOPPING=1, then a clean exit.
            #expect(try await meterd.terminate() == 0)
            #expect(notify.messages.contains { $0.hasPrefix("STOPPING=1") })
        }
    }

    /// A schema migration can take minutes on a large store: meterd tells systemd to wait longer
    /// (`EXTEND_TIMEOUT_USEC`) before it migrates, and only then.
    @Test(.timeLimit(.minutes(1)))
    func aPendingMigrationExtendsTheStartTimeout() async throws {
        try await withTemporaryDirectory { directory in
            // Given a database from before v11-read-success-rollups, with meter-days of two regions.
            let data = directory + "/data"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            do {
                let pool = try DatabasePool(path: data + "/meterd.sqlite")
                try MeterDatabase.migrator.migrate(pool, upTo: "v10-alerts")
                try await pool.write { db in
                    try db.execute(
                        sql: """
                            INSERT INTO meter (id, name, region) VALUES (1, 'A', 'North'), (2, 'B', 'South');
                            INSERT INTO meter_day (day, meter_id, readings) VALUES (20261101, 1, 4), (20261101, 2, 1), (20261102, 1, 2);
                            """)
                }
            }
            for run in 1...2 {
                let notify = try DatagramReceiver(path: directory + "/notify-\(run).sock")
                defer { notify.close() }
                let meterd = try MeterdUnderTest.start(dataDirectory: data, environment: ["NOTIFY_SOCKET": notify.path])
                defer { meterd.process.stop() }
                try await waitUntil { notify.messages.contains { $0.hasPrefix("READY=1") } }
                let extended = notify.messages.firstIndex { $0.hasPrefix("EXTEND_TIMEOUT_USEC=") }
                if run == 1 {
                    // When it first starts, the wait is extended before it migrates, and the migration ran.
                    let index = try #require(extended, "\(notify.messages)")
                    #expect(notify.messages[index] == "EXTEND_TIMEOUT_USEC=1800000000\nSTATUS=Starting: migrating the database schema…")
                    #expect(index < notify.messages.firstIndex { $0.hasPrefix("READY=1") }!)
                } else {
                    // Then a start with nothing to migrate (and a small file) asks for no more time.
                    #expect(extended == nil, "\(notify.messages)")
                }
                #expect(try await meterd.terminate() == 0)
            }
            let regionDays = try await DatabaseQueue(path: data + "/meterd.sqlite").read { db in
                try Row.fetchAll(db, sql: "SELECT day, region, reporting FROM region_day ORDER BY day, region").map {
                    "\($0[0] as Int) \($0[1] as String) \($0[2] as Int)"
                }
            }
            #expect(regionDays == ["20261101 North 1", "20261101 South 1", "20261102 North 1"])
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func watchdogGoesQuietWhileTheWriterIsStalled() async throws {
        try await withTemporaryDirectory { directory in
            let notify = try DatagramReceiver(path: directory + "/notify.sock")
            defer { notify.close() }
            let meterd = try MeterdUnderTest.start(
                dataDirectory: directory + "/data",
                environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"])
            defer { meterd.process.stop() }
            let ports = try await meterd.ports()
            try await waitUntil { notify.messages.filter { $0 == "WATCHDOG=1" }.count >= 2 }

            // Given another process holding SQLite's write lock, the writer cannot commit.
            var configuration = Configuration()
            configuration.allowsUnsafeTransactions = true  // the lock outlives one database access on purpose
            let blocker = try DatabaseQueue(path: directory + "/data/meterd.sqlite", configuration: configuration)
            try await blocker.writeWithoutTransaction { db in try db.execute(sql: "BEGIN EXCLUSIVE") }
            let client = try await LineClient(port: ports.ingest)
            try await client.send(readingLine(meter: "MTR-W1", seq: 1) + "\n")

            // Then the pings stop: no WATCHDOG=1 for well over the watchdog interval.
            var quietSince = ContinuousClock.now
            var seen = notify.messages.count { $0 == "WATCHDOG=1" }
            try await waitUntil(timeout: .seconds(30)) {
                let now = notify.messages.count { $0 == "WATCHDOG=1" }
                if now != seen {
                    seen = now
                    quietSince = .now
                }
                return ContinuousClock.now - quietSince > .seconds(3)
            }
            // And the reading is not acknowledged while it is not committed.
            let statusLine = try await ask(meterd.statusSocket, "status")
            #expect(statusLine.contains(#""acks_total":0"#))
            #expect(statusLine.contains(#""queue_depth":1"#))

            // When the lock goes away, the writer commits, acks, and the pings resume.
            try await blocker.writeWithoutTransaction { db in try db.execute(sql: "ROLLBACK") }
            #expect(try await client.readLine(timeout: .seconds(30)) == #"{"meter":"MTR-W1","ack":1}"#)
            let before = notify.messages.count { $0 == "WATCHDOG=1" }
            try await waitUntil { notify.messages.count { $0 == "WATCHDOG=1" } >= before + 2 }
            await client.close()
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func usesSocketsPassedByName() async throws {
        try await withTemporaryDirectory { directory in
            // Given three listening sockets, passed as systemd does: fds 3, 4, 5 with names.
            let ingest = try ListeningSocket.tcp()
            let statusPath = directory + "/activated-status.sock"
            let status = try ListeningSocket.unix(path: statusPath)
            let http = try ListeningSocket.tcp()
            let meterd = try MeterdUnderTest.start(
                dataDirectory: directory + "/data",
                environment: ["LISTEN_FDS": "3", "LISTEN_FDNAMES": "ingest:status:http"],
                wrapper: ["/bin/sh", "-c", #"LISTEN_PID=$$ exec "$@""#, "sh"],
                inheritedFDs: [ingest.fd, status, http.fd])
            defer { meterd.process.stop() }
            [ingest.fd, status, http.fd].forEach { close($0) }

            // Then meterd serves on them instead of binding its own.
            let ports = try await meterd.ports()
            #expect(ports.ingest == ingest.port)
            #expect(ports.http == http.port)
            let client = try await LineClient(port: ingest.port)
            try await client.send(readingLine(meter: "MTR-A1", seq: 7) + "\n")
            #expect(try await client.readLine() == #"{"meter":"MTR-A1","ack":7}"#)
            await client.close()
            let answer = try await ask(statusPath, "meter MTR-A1")
            #expect(answer.contains(#""meter":"MTR-A1""#))
            #expect(!FileManager.default.fileExists(atPath: meterd.statusSocket))
            let health = try await httpGet(port: http.port, path: "/healthz")
            #expect(health.status == 200)
            #expect(meterd.process.output.contains("Using sockets passed by systemd"))
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func takesASingleUnnamedSocketAsIngestAndBindsTheRest() async throws {
        try await withTemporaryDirectory { directory in
            let ingest = try ListeningSocket.tcp()
            let meterd = try MeterdUnderTest.start(
                dataDirectory: directory + "/data", environment: ["LISTEN_FDS": "1"],
                wrapper: ["/bin/sh", "-c", #"LISTEN_PID=$$ exec "$@""#, "sh"], inheritedFDs: [ingest.fd])
            defer { meterd.process.stop() }
            close(ingest.fd)
            let ports = try await meterd.ports()
            #expect(ports.ingest == ingest.port)
            #expect(ports.http != 0)
            let answer = try await ask(meterd.statusSocket, "status")
            #expect(answer.hasPrefix(#"{"version":"#))
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func logsStructuredFieldsToJournald() async throws {
        try await withTemporaryDirectory { directory in
            // Given a fake journald: our datagram socket, mounted at /run/systemd/journal in a
            // private mount namespace that only meterd sees.
            let journalDirectory = directory + "/journal"
            try FileManager.default.createDirectory(atPath: journalDirectory, withIntermediateDirectories: true)
            let journal = try DatagramReceiver(path: journalDirectory + "/socket")
            defer { journal.close() }
            let script =
                #"mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && mount --bind "$0" /run/systemd/journal && exec "$@""#
            let meterd = try MeterdUnderTest.start(
                dataDirectory: directory + "/data", arguments: ["--log-level", "debug"],
                environment: ["INVOCATION_ID": "0123456789abcdef0123456789abcdef"],
                wrapper: ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, journalDirectory])
            defer { meterd.process.stop() }
            let ports = try await meterd.ports()

            // When a meter sends a malformed line and a reading from the future.
            let client = try await LineClient(port: ports.ingest)
            try await client.send("not json\n" + readingLine(meter: "MTR-J1", seq: 1, timestampMs: WallClock.nowMs() + 3_600_000) + "\n")
            _ = try await client.readLine()
            _ = try await client.readLine()
            await client.close()

            // Then journald gets entries with structured fields.
            try await waitUntil {
                journal.datagrams.map(JournalEntry.parse).contains { $0["CODE"] == "clock_skew" }
            }
            let entries = journal.datagrams.map(JournalEntry.parse)
            let listening = try #require(entries.first { $0["MESSAGE"] == "Ingest server listening" })
            #expect(listening["PRIORITY"] == "6")
            #expect(listening["SYSLOG_IDENTIFIER"] == "meterd")
            #expect(listening["INGEST_ADDRESS"]?.contains("\(ports.ingest)") == true)
            #expect(listening["CODE_FILE"] != nil)
            let malformed = try #require(entries.first { $0["CODE"] == "invalid_json" })
            #expect(malformed["MESSAGE"] == "Rejected a line")
            #expect(malformed["PRIORITY"] == "7")
            #expect(malformed["PEER"]?.contains("127.0.0.1") == true)
            #expect(malformed["LINE"] == "1")
            let skewed = try #require(entries.first { $0["CODE"] == "clock_skew" })
            #expect(skewed["METER"] == "MTR-J1")
            #expect(skewed["LINE"] == "2")
            // Nothing of it on stderr: the journal is the log.
            #expect(!meterd.process.output.contains("Ingest server listening"))
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test func journalFieldNamesFollowJournaldRules() {
        #expect(JournalLogHandler.fieldName("meter") == "METER")
        #expect(JournalLogHandler.fieldName("peer") == "PEER")
        #expect(JournalLogHandler.fieldName("ingest.address") == "INGEST_ADDRESS")
        #expect(JournalLogHandler.fieldName("_private") == "PRIVATE")
        #expect(JournalLogHandler.fieldName("9lives") == "LIVES")
        #expect(JournalLogHandler.fieldName("...") == nil)
        #expect(JournalLogHandler.fieldName(String(repeating: "a", count: 80))?.count == 64)
        let fields = JournalLogHandler.fields(
            level: .warning, message: "two\nlines", metadata: ["meter": "MTR-1", "MESSAGE": "spoof"],
            identifier: "meterd", label: "meterd", file: "F.swift", function: "f()", line: 3)
        #expect(fields.contains("MESSAGE=two\nlines"))
        #expect(fields.contains("PRIORITY=4"))
        #expect(fields.contains("METER=MTR-1"))
        #expect(!fields.contains("MESSAGE=spoof"))  // metadata cannot override the entry's own fields
    }

    @Test func logBackendFollowsHowMeterdWasStarted() async throws {
        try await withTemporaryDirectory { directory in
            let socket = directory + "/socket"
            #expect(LogBackend.detect(environment: [:], journalSocket: socket) == .stderr)
            #expect(LogBackend.detect(environment: ["INVOCATION_ID": "x"], journalSocket: socket) == .stderr)  // no journal here
            #expect(FileManager.default.createFile(atPath: socket, contents: nil))
            #expect(LogBackend.detect(environment: ["INVOCATION_ID": "x"], journalSocket: socket) == .journald)
            #expect(LogBackend.detect(environment: ["JOURNAL_STREAM": "1:2"], journalSocket: directory + "/none") == .stderr)
            let stderr = try #require(LogBackend.stderrIdentity())
            #expect(
                LogBackend.detect(
                    environment: ["JOURNAL_STREAM": stderr],
                    journalSocket: directory + "/none") == .journald)
        }
    }
}

/// One entry of journald's native protocol: `KEY=value\n`, or `KEY\n` + 64-bit LE length + bytes + `\n`.
enum JournalEntry {
    static func parse(_ bytes: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        var index = 0
        while index < bytes.count {
            guard let end = bytes[index...].firstIndex(where: { $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "\n") }) else { break }
            let name = String(decoding: bytes[index..<end], as: UTF8.self)
            if bytes[end] == UInt8(ascii: "=") {
                let valueEnd = bytes[(end + 1)...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
                fields[name] = String(decoding: bytes[(end + 1)..<valueEnd], as: UTF8.self)
                index = valueEnd + 1
            } else {
                guard end + 9 <= bytes.count else { break }
                let length = bytes[(end + 1)..<(end + 9)].enumerated().reduce(0) { $0 | (Int($1.element) << (8 * $1.offset)) }
                let start = end + 9
                fields[name] = String(decoding: bytes[start..<min(start + length, bytes.count)], as: UTF8.self)
                index = start + length + 1
            }
        }
        return fields
    }
}
