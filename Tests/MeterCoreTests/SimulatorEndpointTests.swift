#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import MeterCore
@testable import SimulatorCore

/// `meter-sim run --endpoints` (issue 13 point 6): meters spread over several nodes and move to
/// the next one when theirs goes away, resending what was not acknowledged.
@Suite(.serialized)
struct SimulatorEndpointTests {
    @Test func parsesEndpointListsAndRefusesBadOnes() throws {
        #expect(
            try SimulationEndpoint.parseList("127.0.0.1:7701, node-b.example:7702,[::1]:7703") == [
                SimulationEndpoint(host: "127.0.0.1", port: 7701), SimulationEndpoint(host: "node-b.example", port: 7702),
                SimulationEndpoint(host: "::1", port: 7703),
            ])
        #expect(SimulationEndpoint(host: "::1", port: 7703).description == "[::1]:7703")
        let bad: [(String, String)] = [
            ("", "--endpoints needs at least one HOST:PORT"),
            ("127.0.0.1", "\"127.0.0.1\" is not HOST:PORT: expected HOST:PORT"),
            ("127.0.0.1:0", "the port must be a number between 1 and 65535"),
            ("127.0.0.1:70000", "the port must be a number between 1 and 65535"),
            ("127.0.0.1:x", "the port must be a number between 1 and 65535"),
            (":7700", "the host is empty"),
            ("::1:7700", "an IPv6 address is written [ADDRESS]:PORT"),
            ("a:1,,b:2", "an entry between commas is empty"),
            ("a:1,a:1", "--endpoints lists a:1 twice"),
        ]
        for (text, problem) in bad {
            #expect(throws: SimulationEndpointError.self) { try SimulationEndpoint.parseList(text) }
            do {
                _ = try SimulationEndpoint.parseList(text)
            } catch {
                #expect(error.description.contains(problem), "\(text): \(error.description)")
                #expect(!error.description.contains("\n"))
            }
        }
    }

    @Test func connectionsAreDealtOutOverTheEndpointsInTurn() {
        var configuration = SimulationConfiguration(host: "127.0.0.1", port: 1, meters: 7)
        #expect(configuration.targets == [SimulationEndpoint(host: "127.0.0.1", port: 1)])
        configuration.endpoints = [SimulationEndpoint(host: "a", port: 1), SimulationEndpoint(host: "b", port: 2)]
        #expect((0..<5).map(configuration.homeEndpoint(ofConnection:)) == [0, 1, 0, 1, 0])
        #expect(configuration.validate() == nil)
        configuration.endpoints.append(SimulationEndpoint(host: "a", port: 1))
        #expect(configuration.validate() == "--endpoints lists an endpoint twice")
    }

    @Test(.timeLimit(.minutes(1)))
    func metersStartingOnADeadEndpointMoveToTheLiveOne() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                // Given a live node and a port where nobody listens: half the meters start on each
                let dead = try Self.unusedPort()
                var configuration = SimulationConfiguration(host: "127.0.0.1", port: 1, meters: 20)
                configuration.endpoints = [
                    SimulationEndpoint(host: "127.0.0.1", port: dead), SimulationEndpoint(host: "127.0.0.1", port: harness.port),
                ]
                configuration.interval = 0.05
                configuration.readingsPerMeter = 10
                configuration.firstSeq = 1
                configuration.drainTimeout = 20

                // When the fleet runs
                let result = try await MeterSimulation(configuration: configuration).run()

                // Then the meters of the dead endpoint moved to the live one and delivered everything there
                let report = result.report
                #expect(report.acked == 200)
                #expect(report.unacked == 0)
                #expect(report.endpoints.map(\.endpoint) == ["127.0.0.1:\(dead)", "127.0.0.1:\(harness.port)"])
                #expect(report.endpoints.map(\.homeMeters) == [10, 10])
                #expect(report.endpoints[0].connections == 0)
                #expect(report.endpoints[0].connectFailures == 10)
                #expect(report.endpoints[0].movedAway == 10)
                #expect(report.endpoints[1].movedIn == 10)
                #expect(report.endpoints[1].connections == 20)
                #expect(report.endpoints[1].connectFailures == 0)
                #expect(report.summary.contains("endpoint 127.0.0.1:\(dead): 10 meters started here, 0 connections, 10 failed connects"))
                try await SimulatorFleetTests.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func metersMoveWhenTheirNodeGoesAwayAndResendTheirUnacknowledgedReadingsThere() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                // Given a node that takes readings but never acknowledges them, and a live node
                let vanishing = try await VanishingNode.start()
                var configuration = SimulationConfiguration(host: "127.0.0.1", port: 1, meters: 40)
                configuration.endpoints = [
                    SimulationEndpoint(host: "127.0.0.1", port: vanishing.port), SimulationEndpoint(host: "127.0.0.1", port: harness.port),
                ]
                configuration.interval = 0.1
                configuration.readingsPerMeter = 20
                configuration.firstSeq = 1
                configuration.drainTimeout = 20
                let simulation = MeterSimulation(configuration: configuration)
                async let run = simulation.run()

                // When that node goes away mid-stream, after its meters sent readings to it
                try await waitUntil { vanishing.connections == 20 && vanishing.bytesReceived > 20 * 200 }
                let unackedThere = vanishing.bytesReceived
                try await vanishing.goAway()
                let result = try await run

                // Then its meters moved to the live node, resent what the lost node had (same seqs),
                // and every reading is acknowledged and stored there once
                let report = result.report
                #expect(unackedThere > 0)
                #expect(report.acked == 800)
                #expect(report.unacked == 0)
                #expect(report.resent >= 20, "each moved meter resends what the lost node never acknowledged")
                #expect(report.endpoints[0].connections == 20)
                #expect(report.endpoints[0].lostConnections == 20)
                #expect(report.endpoints[0].movedAway == 20)
                #expect(report.endpoints[1].movedIn == 20)
                #expect(report.endpoints[1].lostConnections == 0)
                #expect(result.ledger.allSatisfy { $0.ackedReadings == 20 && $0.ackedMaxSeq == 20 })
                try await SimulatorFleetTests.expectLedgerMatches(result.ledger, harness.database)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func withEveryEndpointDownConnectionsBackOffInsteadOfSpinning() async throws {
        // Given two ports where nobody listens
        let (first, second) = (try Self.unusedPort(), try Self.unusedPort())
        var configuration = SimulationConfiguration(host: "127.0.0.1", port: 1, meters: 4)
        configuration.endpoints = [SimulationEndpoint(host: "127.0.0.1", port: first), SimulationEndpoint(host: "127.0.0.1", port: second)]
        configuration.interval = 0.1
        configuration.duration = 10
        configuration.connectTimeout = 3
        let simulation = MeterSimulation(configuration: configuration)

        // When the fleet tries for three seconds
        do {
            _ = try await simulation.run()
            Issue.record("a fleet with no node to talk to must fail")
        } catch let error as SimulationError {
            // Then it fails naming both endpoints, having tried each in turn with a growing delay:
            // 100 ms doubling (±50 %) allows at most 7 attempts per connection in 3 s, not thousands
            #expect(
                error.description
                    == "Could not connect to meterd at any of 127.0.0.1:\(first), 127.0.0.1:\(second) within 3 s; is it running and listening there?")
        }
        let failures = simulation.counters.connectFailures.load(ordering: .relaxed)
        #expect(failures >= 4 * 3)
        #expect(failures <= 4 * 8)
        #expect(simulation.counters.endpoints.allSatisfy { $0.connectFailures.load(ordering: .relaxed) >= 4 })
    }

    @Test(.timeLimit(.minutes(1)))
    func theCommandTakesEndpointsAndRefusesBadOnesInOneLine() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let dead = try Self.unusedPort()
                let reportPath = directory + "/report.json"
                let run = try await SimulatorCommandTests.run([
                    "run", "--endpoints", "127.0.0.1:\(harness.port),127.0.0.1:\(dead)", "--meters", "6", "--interval", "0.05",
                    "--readings-per-meter", "5", "--first-seq", "1", "--report", reportPath,
                ])
                #expect(run.status == 0, "\(run.stderr)")
                #expect(run.stdout.contains("acked 30,"))
                #expect(run.stdout.contains("endpoint 127.0.0.1:\(dead): 3 meters started here, 0 connections, 3 failed connects"))
                let json = try #require(
                    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reportPath))) as? [String: Any])
                let endpoints = try #require(json["endpoints"] as? [[String: Any]])
                #expect(endpoints.map { $0["endpoint"] as? String } == ["127.0.0.1:\(harness.port)", "127.0.0.1:\(dead)"])
                #expect(endpoints.map { $0["moved_away"] as? Int } == [0, 3])
                #expect(endpoints.map { $0["home_meters"] as? Int } == [3, 3])
            }
        }
        for (arguments, problem) in [
            (["--endpoints", "127.0.0.1"], "--endpoints: \"127.0.0.1\" is not HOST:PORT: expected HOST:PORT"),
            (["--endpoints", "127.0.0.1:1,127.0.0.1:99999"], "the port must be a number between 1 and 65535"),
            (["--endpoints", "127.0.0.1:1", "--port", "7700"], "--endpoints replaces --host and --port"),
        ] {
            let run = try await SimulatorCommandTests.run(["run", "--meters", "1"] + arguments)
            #expect(run.status == 64, "a usage error, as every other bad flag: \(run.stderr)")
            #expect(run.stderr.contains(problem), "\(run.stderr)")
            #expect(run.stderr.split(separator: "\n").first?.contains(problem) == true, "the problem comes first, on one line")
        }
    }

    /// A loopback port nobody listens on (bound, then closed).
    static func unusedPort() throws -> Int {
        let (fd, port) = try ListeningSocket.tcp()
        close(fd)
        return port
    }
}

/// A stand-in node that accepts meters and reads what they send but never acknowledges it, until
/// ``goAway()`` closes every connection and the listener, as a node dies.
final class VanishingNode: Sendable {
    let port: Int
    private let server: any Channel
    private let state = NIOLockedValueBox<(children: [any Channel], bytes: Int)>(([], 0))

    private init(server: any Channel, port: Int) {
        self.server = server
        self.port = port
    }

    static func start() async throws -> VanishingNode {
        let box = NIOLockedValueBox<VanishingNode?>(nil)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                box.withLockedValue { $0 }?.accepted(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Swallower { count in box.withLockedValue { $0 }?.received(count) })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let node = VanishingNode(server: server, port: server.localAddress!.port!)
        box.withLockedValue { $0 = node }
        return node
    }

    var connections: Int { self.state.withLockedValue { $0.children.count } }
    var bytesReceived: Int { self.state.withLockedValue { $0.bytes } }

    private func accepted(_ channel: any Channel) {
        self.state.withLockedValue { $0.children.append(channel) }
    }

    private func received(_ count: Int) {
        self.state.withLockedValue { $0.bytes += count }
    }

    /// Stops listening, then resets every connection it had.
    func goAway() async throws {
        try await self.server.close()
        for child in self.state.withLockedValue({ $0.children }) {
            try? await child.close()
        }
    }

    private final class Swallower: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let onBytes: @Sendable (Int) -> Void
        init(_ onBytes: @escaping @Sendable (Int) -> Void) { self.onBytes = onBytes }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            self.onBytes(Self.unwrapInboundIn(data).readableBytes)
        }
    }
}
