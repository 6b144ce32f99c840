import Foundation
import GRDB
import Testing

@testable import MeterCore

/// Resident set size of a process in kB, from /proc.
func residentKilobytes(pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return nil }
    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
}

@Suite(.timeLimit(.minutes(2))) struct HostileInputTests {
    /// Each hostile line and the error the daemon must answer it with.
    static let hostileLines: [(String, [UInt8])] = [
        ("invalid_json", Array("\u{0}\u{0}\u{0}".utf8)),
        ("invalid_json", [0xFF, 0xFE, 0x7B, 0x22, 0xC3]),
        ("invalid_json", Array(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":"\#u{0}"}"#.utf8)),
        ("invalid_json", Array((String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)).prefix(4000).utf8)),
        ("invalid_json", Array(#"{"meter":"H","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":NaN}"#.utf8)),
        ("invalid_json", Array(#"{"meter":"H","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":Infinity}"#.utf8)),
        ("invalid_json", Array(#"{"meter":"H","meter":"I","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#.utf8)),
        ("invalid_field", Array(#"{"meter":"H","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1e999999}"#.utf8)),
        ("invalid_field", Array(#"{"meter":"H","seq":123456789012345678901234567890,"ts":"2026-11-29T10:15:00Z","kwh":1}"#.utf8)),
        ("invalid_field", Array(#"{"meter":"H","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":0.000000000000000000000000001e999}"#.utf8)),
        ("missing_field", Array(#"{"meter":"H","seq":1,"ts":"2026-11-29T10:15:00Z","kw\u0068x":1}"#.utf8)),
    ]

    @Test func garbageNeverCrashesTheDaemonNorTouchesOtherMeters() async throws {
        try await withTemporaryDirectory { directory in
            let daemon = try DaemonProcess(dataDirectory: directory)
            let port = try await daemon.ingestPort()
            let honest = try await LineClient(port: port)

            // Every hostile line, each answered with its own error and line number.
            let hostile = try await LineClient(port: port)
            var payload: [UInt8] = []
            for (_, line) in Self.hostileLines { payload += line + [0x0A] }
            try await hostile.send(bytes: payload)
            var answers: [DaemonLine] = []
            while answers.count < Self.hostileLines.count {
                let text = try #require(try await hostile.readLine())
                answers.append(try #require(DaemonLine(text)))
            }
            #expect(answers == Self.hostileLines.enumerated().map { .error(code: $1.0, line: $0 + 1) })

            // Random bytes: whatever comes back is an error line, never an ack for a reading that was not sent.
            var generator = SystemRandomNumberGenerator()
            let noise = try await LineClient(port: port)
            var noiseBytes = (0..<200_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
            noiseBytes.append(0x0A)
            try await noise.send(bytes: noiseBytes)

            // A 10 MB line without a newline, and a meter that drips bytes slowly.
            let flood = try await LineClient(port: port)
            let chunk = [UInt8](repeating: UInt8(ascii: "A"), count: 1 << 20)
            for _ in 0..<10 { try await flood.send(bytes: chunk) }
            let drip = try await LineClient(port: port)
            let dripTask = Task {
                for byte in readingLine(meter: "DRIP", seq: 1).utf8 {
                    try await drip.send(bytes: [byte])
                    try await Task.sleep(for: .milliseconds(2))
                }
            }

            // Meanwhile the honest meter's readings are all stored and acked.
            for seq in 1...50 {
                try await honest.send(readingLine(meter: "HONEST", seq: Int64(seq), kwh: 1))
            }
            _ = try await honest.collect { lastAck($0, meter: "HONEST") == 50 }
            try await dripTask.value
            #expect(try await drip.collect { !$0.isEmpty } == [.ack(meter: "DRIP", seq: 1)])

            #expect(daemon.isRunning)
            let rss = try #require(residentKilobytes(pid: daemon.pid))
            #expect(rss < 200_000, "meterd uses \(rss) kB after a 10 MB line")
            for client in [honest, hostile, noise, flood, drip] { await client.close() }
            daemon.terminate()
            #expect(try await daemon.exitStatus() == 0)

            let database = try MeterDatabase(path: directory + "/meterd.sqlite")
            let (honestKwh, quarantined, overlong) = try await database.pool.read { db in
                (
                    try Double.fetchOne(db, sql: "SELECT sum(kwh) FROM reading JOIN meter ON meter.id = meter_id WHERE name = 'HONEST'"),
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM quarantine")!,
                    try Int.fetchOne(db, sql: "SELECT count(*) FROM quarantine WHERE code = 'line_too_long'")!
                )
            }
            #expect(honestKwh == 50)
            #expect(quarantined >= Self.hostileLines.count + 1)
            #expect(overlong >= 1)
        }
    }
}
