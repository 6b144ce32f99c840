import Foundation
import Testing

@testable import MeterCore

/// Deploy/: the units pass `systemd-analyze verify` without a word and rate 2.0 or better.
@Suite(.serialized)
struct DeployTests {
    static let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Deploy").standardized.path

    /// Runs a command; stdout and stderr together.
    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let result = try runProgram(arguments)
        return (result.status, result.stdout + result.stderr)
    }

    /// A scratch root as `systemd-analyze --root` wants it: systemd's own units, ours, and the binary.
    static func withRoot<T: Sendable>(service: String? = nil, _ body: @escaping @Sendable (String) throws -> T) async throws -> T {
        try await withTemporaryDirectory { root in
            let manager = FileManager.default
            try manager.createDirectory(atPath: root + "/usr/lib/systemd", withIntermediateDirectories: true)
            try manager.createDirectory(atPath: root + "/etc/systemd/system", withIntermediateDirectories: true)
            try manager.createDirectory(atPath: root + "/usr/local/bin", withIntermediateDirectories: true)
            try manager.copyItem(atPath: "/usr/lib/systemd/system", toPath: root + "/usr/lib/systemd/system")
            try manager.copyItem(atPath: try BuiltProduct.path("meterd"), toPath: root + "/usr/local/bin/meterd")
            try manager.createDirectory(atPath: root + "/usr/bin", withIntermediateDirectories: true)
            try manager.copyItem(atPath: "/usr/bin/kill", toPath: root + "/usr/bin/kill")  // ExecReload
            let unit = try service ?? String(contentsOfFile: Self.deploy + "/meterd.service", encoding: .utf8)
            try unit.write(toFile: root + "/etc/systemd/system/meterd.service", atomically: true, encoding: .utf8)
            try manager.copyItem(atPath: Self.deploy + "/meterd.socket", toPath: root + "/etc/systemd/system/meterd.socket")
            return try await offPool { try body(root) }
        }
    }

    static func verify(root: String) throws -> (status: Int32, output: String) {
        try Self.run(["/usr/bin/systemd-analyze", "verify", "--man=no", "--root=\(root)", "meterd.service", "meterd.socket"])
    }

    @Test(.timeLimit(.minutes(1)))
    func unitsVerifyWithoutAnyDiagnostic() async throws {
        let result = try await Self.withRoot { try Self.verify(root: $0) }
        #expect(result.status == 0)
        #expect(result.output.isEmpty, "systemd-analyze verify said:\n\(result.output)")
    }

    @Test(.timeLimit(.minutes(1)))
    func verifyCatchesAMistypedUnit() async throws {
        // The check above can fail: verify exits 0 on a typo but does say something.
        let broken = try String(contentsOfFile: Self.deploy + "/meterd.service", encoding: .utf8)
            .replacingOccurrences(of: "WatchdogSec=30s", with: "WatchDogSec=30s")
        let result = try await Self.withRoot(service: broken) { try Self.verify(root: $0) }
        #expect(result.output.contains("WatchDogSec"))
    }

    @Test(.timeLimit(.minutes(1)))
    func hardeningRatesTwoOrBetter() async throws {
        let result = try await Self.withRoot { root in
            try Self.run(["/usr/bin/systemd-analyze", "security", "--offline=yes", "--root=\(root)", "--threshold=20", "meterd.service"])
        }
        let line = try #require(
            result.output.split(separator: "\n").first { $0.contains("Overall exposure level for meterd.service") },
            "no rating in:\n\(result.output)")
        let score = try #require(line.split(separator: ":").last.flatMap { Double($0.split(separator: " ").first ?? "") })
        #expect(score <= 2.0, "\(line)")
        #expect(result.status == 0)
    }

    @Test func serviceDeclaresTheContractOfSpecSection8() throws {
        let unit = try String(contentsOfFile: Self.deploy + "/meterd.service", encoding: .utf8)
        for setting in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "User=meterd", "StateDirectory=meterd", "RuntimeDirectory=meterd"] {
            #expect(unit.contains("\n" + setting), "meterd.service lacks \(setting)")
        }
        let socket = try String(contentsOfFile: Self.deploy + "/meterd.socket", encoding: .utf8)
        #expect(socket.contains("FileDescriptorName=ingest"))
    }

    @Test func exampleConfigLoads() throws {
        let text = try String(contentsOfFile: Self.deploy + "/meterd.conf", encoding: .utf8)
        var configuration = DaemonConfiguration()
        try configuration.load(configFile: text, path: "meterd.conf")
        #expect(configuration.http == ListenAddress(host: "127.0.0.1", port: 8080))
        #expect(configuration.durability == .full)
    }

    @Test func installScriptIsValidShellAndBuildsStatically() throws {
        let script = Self.deploy + "/install.sh"
        #expect(FileManager.default.isExecutableFile(atPath: script))
        let syntax = try Self.run(["/bin/sh", "-n", script])  // quick: sh only parses
        #expect(syntax.status == 0, "\(syntax.output)")
        #expect(try String(contentsOfFile: script, encoding: .utf8).contains("--static-swift-stdlib"))
    }
}
