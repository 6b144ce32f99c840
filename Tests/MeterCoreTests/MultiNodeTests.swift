import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Testing

@testable import MeterCore

/// Several meterd nodes on one PostgreSQL database (issue 13 point 4): a meter moving between
/// nodes, every node's KPIs following the others' commits, and the singleton lease.
@Suite struct MultiNodeTests {
    /// One node's writer, used from one thread at a time.
    final class Node: @unchecked Sendable {
        let store: PostgreSQLMeterStore
        let writer: any MeterStoreWriter
        /// Commits that lost a race with the other node and went again.
        var lostRaces = 0

        init(_ address: PostgreSQLAddress) throws {
            self.store = try PostgreSQLMeterStore(address: address, logger: testLogger)
            self.writer = try self.store.makeWriter(WriterSettings())
        }

        /// Commits as the pipeline does: a batch that lost a race goes again (the writer reloaded
        /// its cache), a bounded number of times.
        func commit(_ readings: [Reading]) throws -> CommitResult {
            let now = WallClock.nowMs()
            let submission = IngestSubmission(
                readings: readings.enumerated().map { SubmittedReading(reading: $1, line: $0 + 1, receivedMs: now) }, receiver: nil)
            for _ in 0..<IngestPipeline.maximumLostRaces {
                do {
                    return try self.writer.commit([submission])
                } catch let error where self.writer.lostRace(error) {
                    self.lostRaces += 1
                }
            }
            throw PostgreSQLStoreError("lost \(IngestPipeline.maximumLostRaces) races in a row")
        }
    }

    /// The highest seq acknowledged per meter, by either node.
    final class Acks: Sendable {
        let values: Mutex<[Int64]>

        init(meters: Int) {
            self.values = Mutex([Int64](repeating: 0, count: meters))
        }
    }

    /// What a meter resends keeps its seq, time and energy.
    static func reading(meter: Int, seq: Int64) -> Reading {
        Reading(
            meter: "MTR-\(meter)", seq: seq, timestampMs: 1_795_000_000_000 + seq * 60_000, kwh: Double((seq * 7 + Int64(meter)) % 13) / 8,
            status: seq % 5 == 0 ? .poor : .good)
    }

    @Test(.timeLimit(.minutes(3)))
    func aMeterSendingThroughTwoNodesAtOnceIsStoredOnceWithItsAggregatesAndHighWaterMark() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        // Given two nodes on one database, and meters whose lowest unacknowledged reading both nodes see
        let nodes = [try Node(address), try Node(address)]
        let meters = 6
        let lastSeq: Int64 = 300
        let acked = Acks(meters: meters)

        // When each node, at the same time, takes windows of readings from a meter's lowest
        // unacknowledged one (as a meter that moved, or is connected twice, resends them) and commits them
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, node) in nodes.enumerated() {
                group.addTask {
                    try await offPool {
                        var random = SystemRandomNumberGenerator()
                        while true {
                            let pending = acked.values.withLock { acked in acked.indices.filter { acked[$0] < lastSeq } }
                            guard let meter = pending.randomElement(using: &random) else { return }
                            let lowest = acked.values.withLock { $0[meter] } + 1
                            guard lowest <= lastSeq else { continue }  // the other node finished it meanwhile
                            let from = max(1, lowest - Int64.random(in: 0...3, using: &random))  // and some acked again
                            let to = min(lastSeq, lowest + Int64.random(in: 0...24, using: &random))
                            let result = try node.commit((from...to).map { Self.reading(meter: meter, seq: $0) })
                            let ack = try #require(result.outcomes.first?.acks.first { $0.meter == "MTR-\(meter)" }?.seq)
                            #expect(ack == to, "node \(index) acks what it committed or found committed")
                            acked.values.withLock { $0[meter] = max($0[meter], ack) }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }

        // Then every reading is stored once, the aggregates equal the readings, and the high-water marks are right
        let store = nodes[0].store
        for meter in 0..<meters {
            let readings = try #require(try await store.recentReadings(meter: "MTR-\(meter)", limit: 10_000)).readings
            #expect(readings.map(\.seq).sorted() == Array(1...lastSeq), "MTR-\(meter) stored every reading once")
            let expected = (1...lastSeq).map { Self.reading(meter: meter, seq: $0).kwh }.reduce(0, +)
            let months = try await store.meterMonths(named: "MTR-\(meter)")
            #expect(abs(months.map(\.kwh).reduce(0, +) - expected) < 1e-9)
            let record = try #require(try await store.meterRecord(named: "MTR-\(meter)"))
            #expect(record.highWaterMark == lastSeq)
            #expect(record.readingsTotal == lastSeq)
        }
        // The nodes really did collide (and recovered every time).
        #expect(nodes[0].lostRaces + nodes[1].lostRaces > 0)
    }

    /// This node's writer, with the other node committing a meter's next reading before each of
    /// its commits, as a meter sent to both nodes at once does at its worst: this node loses every
    /// race for that meter.
    final class RivalFirstWriter: ForwardingWriter, @unchecked Sendable {
        private let rival: Node
        private let meter: Int
        private var nextSeq: Int64 = 1_000
        let rivalSends = Atomic<Bool>(true)

        init(_ base: any MeterStoreWriter, rival: Node, meter: Int) {
            self.rival = rival
            self.meter = meter
            super.init(base)
        }

        override func commit(_ submissions: [IngestSubmission], deferAggregates: Bool) throws -> CommitResult {
            if self.rivalSends.load(ordering: .relaxed) {
                _ = try self.rival.commit([MultiNodeTests.reading(meter: self.meter, seq: self.nextSeq)])
                self.nextSeq += 1
            }
            return try super.commit(submissions, deferAggregates: deferAggregates)
        }
    }

    /// The highest seq acked to one sender, per meter.
    final class AckedSeqs: AckReceiver {
        let seqs = Mutex<[String: Int64]>([:])
        func deliver(_ outcome: SubmissionOutcome) {
            self.seqs.withLock { seqs in
                for ack in outcome.acks { seqs[ack.meter] = max(seqs[ack.meter] ?? -1, ack.seq) }
            }
        }
    }

    /// A meter sent to two nodes at once used to make the node that lost the race for it lose its
    /// whole batch, commit after commit: after 20 in a row every meter on it was told busy and its
    /// `/readyz` failed. Now the first lost race makes the node read its batches' meters before
    /// committing: the rest of each batch commits, and the contested meter's reading, below what
    /// the other node stored, is acked as its duplicate while the other node goes on.
    @Test(.timeLimit(.minutes(2)))
    func aMeterTheOtherNodeKeepsStoringHoldsUpNoOtherMeter() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let rival = try Node(address)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let twin = 0
        let writer = RivalFirstWriter(try store.makeWriter(WriterSettings()), rival: rival, meter: twin)
        let pipeline = IngestPipeline(
            writer: writer, configuration: PipelineConfiguration(queueCapacity: 10_000, commitInterval: .milliseconds(1), maximumBatch: 500),
            logger: testLogger)
        func submit(meter: Int, seq: Int64, to receiver: AckedSeqs) {
            let submission = IngestSubmission(
                readings: [SubmittedReading(reading: Self.reading(meter: meter, seq: seq), line: 1, receivedMs: WallClock.nowMs())],
                receiver: receiver)
            _ = pipeline.submit(submission)
        }
        try await withRunningServices([pipeline]) {
            // Given the twin's reading first in this node's queue, and the other node committing
            // the twin's next reading before each of this node's commits
            let twinSender = AckedSeqs()
            submit(meter: twin, seq: 1, to: twinSender)
            // When 40 other meters send a reading each, one after another
            let others = AckedSeqs()
            for meter in 1...40 {
                submit(meter: meter, seq: 1, to: others)
                try await Task.sleep(for: .milliseconds(5))
            }
            // Then each of them is acked, the twin too while the other node keeps storing it, and
            // no commit counts as failed
            try await waitUntil(timeout: .seconds(20)) { others.seqs.withLock { $0.count } == 40 }
            try await waitUntil(timeout: .seconds(10)) { twinSender.seqs.withLock { $0["MTR-0"] } == 1 }
            #expect(pipeline.statistics.lostRaces.load(ordering: .relaxed) >= 1)
            #expect(pipeline.statistics.commitFailures.load(ordering: .relaxed) == 0)
            #expect(pipeline.failure == nil)

            writer.rivalSends.store(false, ordering: .relaxed)
            await pipeline.drain()
        }
        // Then every reading is stored once
        for meter in 1...40 {
            let readings = try #require(try await store.recentReadings(meter: "MTR-\(meter)", limit: 10)).readings
            #expect(readings.map(\.seq) == [1])
        }
        let rivalReadings = try #require(try await store.recentReadings(meter: "MTR-0", limit: 10_000)).readings
        #expect(Set(rivalReadings.map(\.seq)).count == rivalReadings.count)
        #expect(rivalReadings.allSatisfy { $0.seq >= 1_000 })
        #expect(try await store.meterRecord(named: "MTR-0")?.readingsTotal == Int64(rivalReadings.count))
    }

    /// The same stream sent to two nodes at once, the other one storing each reading as this one
    /// gets it: this node used to retry its whole backlog of the meter, lose again, and ack none of
    /// it for as long as the stream went on (seconds to a minute at 100 readings/s). Now what the
    /// other node stored is acked here as its duplicates within a few milliseconds.
    @Test(.timeLimit(.minutes(2)))
    func aStreamTheOtherNodeAlsoStoresIsAckedHereAsItsDuplicates() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let rival = try Node(address)
        let store = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let twin = 0
        let pipeline = IngestPipeline(
            writer: try store.makeWriter(WriterSettings()),
            configuration: PipelineConfiguration(queueCapacity: 10_000, commitInterval: .milliseconds(1), maximumBatch: 500),
            logger: testLogger)
        try await withRunningServices([pipeline]) {
            // Given the twin's readings every 10 ms, each sent here and stored by the other node at once,
            // over a concentrator's connection that carries another meter's reading with each
            let twinSender = AckedSeqs()
            let others = AckedSeqs()
            var lagging = 0
            for seq in Int64(1)...150 {
                let reading = Self.reading(meter: twin, seq: seq)
                let neighbour = Self.reading(meter: 1_000 + Int(seq), seq: 1)
                _ = pipeline.submit(
                    IngestSubmission(
                        readings: [reading, neighbour].enumerated().map {
                            SubmittedReading(reading: $1, line: $0 + 1, receivedMs: WallClock.nowMs())
                        },
                        receiver: twinSender))
                _ = pipeline.submit(
                    IngestSubmission(
                        readings: [SubmittedReading(reading: Self.reading(meter: Int(seq), seq: 1), line: 1, receivedMs: WallClock.nowMs())],
                        receiver: others))
                _ = try rival.commit([reading])
                try await Task.sleep(for: .milliseconds(10))
                // Then the twin's acks, and its neighbours' on the same connection, keep up with the stream
                let (twinAcked, neighboursAcked) = twinSender.seqs.withLock { ($0["MTR-0"] ?? 0, $0.count - ($0["MTR-0"] == nil ? 0 : 1)) }
                if seq > 20, twinAcked < seq - 20 || neighboursAcked < Int(seq) - 20 { lagging += 1 }
            }
            try await waitUntil(timeout: .seconds(10)) { twinSender.seqs.withLock { $0["MTR-0"] == 150 && $0.count == 151 } }
            try await waitUntil(timeout: .seconds(10)) { others.seqs.withLock { $0.count } == 150 }
            #expect(lagging <= 13, "the twin's acks fell over 20 readings (200 ms) behind at \(lagging) of 130 points")
            #expect(pipeline.statistics.commitFailures.load(ordering: .relaxed) == 0)
            #expect(pipeline.statistics.duplicates.load(ordering: .relaxed) >= 100, "acked as the other node's duplicates")
            await pipeline.drain()
        }
        // And every twin reading is stored once
        let readings = try #require(try await store.recentReadings(meter: "MTR-0", limit: 1_000)).readings
        #expect(readings.map(\.seq).sorted() == Array(1...150))
    }

    /// A daemon on a shared store, with its own data directory and ports, and short intervals.
    struct RunningNode {
        let daemon: MeterDaemon
        let group: ServiceGroup
        let ingestPort: Int
        let directory: String
    }

    static func configuration(_ address: PostgreSQLAddress, directory: String) -> DaemonConfiguration {
        var configuration = DaemonConfiguration()
        configuration.dataDirectory = directory
        configuration.store = .postgresql(address)
        configuration.ingest = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.http = ListenAddress(host: "127.0.0.1", port: 0)
        configuration.inactiveAfterSeconds = 60  // no meter falls silent during the test
        configuration.snapshotIntervalSeconds = 1
        configuration.singletonLeaseInterval = .milliseconds(250)
        configuration.commitFeedInterval = .milliseconds(250)
        return configuration
    }

    static func start(
        _ address: PostgreSQLAddress, directory: String, in tasks: inout ThrowingTaskGroup<Void, any Error>
    ) async throws
        -> RunningNode
    {
        let (ports, sink) = AsyncStream.makeStream(of: Int.self)
        let daemon = try MeterDaemon(
            configuration: Self.configuration(address, directory: directory), logger: testLogger,
            onIngestListening: { sink.yield($0.port ?? 0) })
        let group = ServiceGroup(services: daemon.services, logger: testLogger)
        tasks.addTask { try await group.run() }
        let port = try #require(await ports.first { _ in true })
        return RunningNode(daemon: daemon, group: group, ingestPort: port, directory: directory)
    }

    /// Sends readings over TCP and waits for the ack of the last one.
    static func send(_ readings: [Reading], to port: Int) async throws {
        let client = try await LineClient(port: port)
        for reading in readings { try await client.send(reading.line + "\n") }
        let last = try #require(readings.last)
        var acked = false
        while !acked, let line = try await client.readLine() {
            acked = line.contains("\"ack\":\(last.seq)") && line.contains(last.meter)
        }
        await client.close()
        #expect(acked, "no ack for \(last.meter) \(last.seq)")
    }

    static func kpis(_ node: RunningNode, nowMs: Int64) async throws -> KPIDocument {
        try await node.daemon.kpi.document(period: node.daemon.kpi.defaultPeriod(nowMs: nowMs), region: nil, nowMs: nowMs)
    }

    @Test(.timeLimit(.minutes(3)))
    func aLoginOnOneNodeIsHonouredByEveryNodeAndALogoutEndsItOnAll() async throws {
        let server = try await PostgresTestServer.shared()
        let address = try await server.createDatabase()
        try await withTemporaryDirectory { root in
            // Given two real meterd nodes on one database with the same users file
            let users = root + "/users"
            try await SecuredMeterd.addUser("ana", [], file: users)
            let arguments = ["--store", server.socketURL(address), "--http-users", users]
            var a = try MeterdUnderTest.start(dataDirectory: root + "/a", arguments: arguments)
            let b = try MeterdUnderTest.start(dataDirectory: root + "/b", arguments: arguments)
            var aHTTP = try await a.ports().http
            let bHTTP = try await b.ports().http
            func session(port: Int, _ cookie: String) async throws -> HTTPExchange {
                try await httpRequest(port: port, "/api/session", headers: ["Cookie": "\(HTTPAccess.cookieName)=\(cookie)"])
            }

            // When ana logs in on node A
            let login = try await httpRequest(port: aHTTP, "/login", method: "POST", body: SecuredMeterd.loginForm("ana"))
            #expect(login.status == 303)
            let cookie = try #require(login.sessionCookie)

            // Then node B knows her session (a browser behind a load balancer may reach either)
            let onB = try await session(port: bHTTP, cookie)
            #expect(onB.status == 200 && onB.json["user"] as? String == "ana", "\(onB.status) \(onB.body)")
            // …and the database holds only the token's SHA-256, not the token
            let store = try #require(try StoreLocation.postgresql(address).open(logger: testLogger) as? PostgreSQLMeterStore)
            #expect(try await store.firstColumnText("SELECT count(*)::text FROM http_session") == ["1"])
            #expect(try await store.firstColumnText("SELECT encode(token_sha256, 'hex') FROM http_session") == [Self.sha256Hex(cookie)])

            // When node A restarts, the session outlives it
            #expect(try await a.terminate() == 0, "\(a.process.output)")
            try FileManager.default.removeItem(atPath: root + "/a/ports.json")  // the old ports, until the new process removes it
            a = try MeterdUnderTest.start(dataDirectory: root + "/a", arguments: arguments)
            aHTTP = try await a.ports().http
            let afterRestart = try await session(port: aHTTP, cookie)
            #expect(afterRestart.status == 200 && afterRestart.json["user"] as? String == "ana", "\(afterRestart.status) \(afterRestart.body)")

            // When she logs out on node B, node A stops honouring the session too, within its
            // confirmation interval
            let logout = try await httpRequest(
                port: bHTTP, "/logout", method: "POST", headers: ["Cookie": "\(HTTPAccess.cookieName)=\(cookie)"], body: "")
            #expect(logout.status == 303)
            #expect(try await session(port: bHTTP, cookie).status == 401)
            try await waitUntil(timeout: .seconds(10)) { try await session(port: aHTTP, cookie).status == 401 }
            #expect(try await store.firstColumnText("SELECT count(*)::text FROM http_session") == ["0"])
            // A made-up token is refused on both without a row to find
            #expect(try await session(port: aHTTP, String(repeating: "ab", count: 32)).status == 401)

            #expect(try await a.terminate() == 0, "\(a.process.output)")
            #expect(try await b.terminate() == 0, "\(b.process.output)")
        }
    }

    static func sha256Hex(_ text: String) -> String {
        let result = try? runProgram(["/usr/bin/sha256sum"], input: text)
        return String(result?.stdout.prefix(64) ?? "")
    }

    @Test(.timeLimit(.minutes(3)))
    func everyNodeShowsTheSameFiguresAndOneNodeDoesTheSingletonWork() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        try await withTemporaryDirectory { root in
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                // Given two nodes on one database
                let a = try await Self.start(address, directory: root + "/a", in: &tasks)
                let b = try await Self.start(address, directory: root + "/b", in: &tasks)
                let nodes = [a, b]
                // Both have their KPI stores loaded before any reading (after the feed's first poll,
                // which drops them), so what follows reaches each through the writer or the feed, not a load.
                try await waitUntil(timeout: .seconds(10)) { nodes.allSatisfy { ($0.daemon.feed?.polls ?? 0) > 0 } }
                let now = WallClock.nowMs()
                for node in nodes { _ = try await Self.kpis(node, nowMs: now) }
                let loads = nodes.map(\.daemon.rollups.loads)
                #expect(loads == [1, 1])

                // Exactly one node does the singleton work
                try await waitUntil(timeout: .seconds(10)) { nodes.filter { $0.daemon.lease.isLeader }.count == 1 }
                let leader = try #require(nodes.first { $0.daemon.lease.isLeader })
                let follower = try #require(nodes.first { !$0.daemon.lease.isLeader })
                try await waitUntil(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: leader.directory + "/kpi.json") }
                #expect(!FileManager.default.fileExists(atPath: follower.directory + "/kpi.json"), "only the leader writes snapshots")

                // When readings go through node A, and the same meter then moves to node B and resends some
                let readingTime = WallClock.nowMs() - 60_000
                func reading(_ meter: String, _ seq: Int64) -> Reading {
                    Reading(meter: meter, seq: seq, timestampMs: readingTime + seq * 100, kwh: 0.25 * Double(seq % 4 + 1))
                }
                try await Self.send((1...40).map { reading("MTR-M", $0) } + (1...10).map { reading("MTR-A", $0) }, to: a.ingestPort)
                try await Self.send((31...60).map { reading("MTR-M", $0) } + (1...5).map { reading("MTR-B", $0) }, to: b.ingestPort)
                let expectedKwh =
                    (1...60).map { reading("MTR-M", $0).kwh }.reduce(0, +) + (1...10).map { reading("MTR-A", $0).kwh }.reduce(0, +)
                    + (1...5).map { reading("MTR-B", $0).kwh }.reduce(0, +)

                // Then within a few seconds both nodes answer the same KPI document, counting each reading once
                let started = ContinuousClock.now
                var documents: [KPIDocument] = []
                try await waitUntil(
                    timeout: .seconds(10),
                    detail: {
                        let keys = documents.count == 2 ? (try? PostgreSQLClusterTests.differingKeys(documents[0], documents[1])) ?? [] : []
                        let (totals, polls) = (documents.map(\.totalConsumptionKwh), nodes.map { $0.daemon.feed?.polls ?? 0 })
                        return "A and B differ in \(keys); total kWh \(totals), expected \(expectedKwh); feed polls \(polls)"
                    }
                ) {
                    let at = WallClock.nowMs()
                    documents = [try await Self.kpis(a, nowMs: at), try await Self.kpis(b, nowMs: at)]
                    // (each node sums the same deltas in its own order: revenue agrees to 1e-9 relative)
                    return try sameFigures(try AnswerEncoder.json(documents[0]), try AnswerEncoder.json(documents[1]))
                        && abs(documents[0].totalConsumptionKwh - expectedKwh) < 1e-9
                }
                #expect(ContinuousClock.now - started < .seconds(3), "other nodes' commits show within a poll or two")
                #expect(abs(documents[1].totalConsumptionKwh - expectedKwh) < 1e-9)
                #expect(nodes.map(\.daemon.rollups.loads) == loads, "the figures came through the feed, not a reload")
                let store = try StoreLocation.postgresql(address).open(logger: testLogger)
                #expect(try #require(try await store.meterRecord(named: "MTR-M")).highWaterMark == 60)
                #expect(try #require(try await store.recentReadings(meter: "MTR-M", limit: 1000)).readings.count == 60)
                // …and the status socket's fleet figures agree too, within the few seconds of
                // staleness a node may show (SPEC §9), with one node leading
                try await waitUntil(timeout: .seconds(5)) {
                    let statuses = [await a.daemon.reporter.status(), await b.daemon.reporter.status()]
                    return statuses[0].meters == statuses[1].meters
                        && statuses.compactMap(\.singletonLeader).sorted { !$0 && $1 } == [false, true]
                }

                // When the leader stops, the other node takes the singleton work over within two intervals
                await leader.group.triggerGracefulShutdown()
                try await waitUntil(timeout: .seconds(10)) { !leader.daemon.lease.isLeader }
                let stopped = ContinuousClock.now
                try? FileManager.default.removeItem(atPath: follower.directory + "/kpi.json")
                try await waitUntil(timeout: .seconds(10)) { follower.daemon.lease.isLeader }
                #expect(ContinuousClock.now - stopped < .seconds(2), "the lease moved within three lease intervals (250 ms each)")
                try await waitUntil(timeout: .seconds(10)) { FileManager.default.fileExists(atPath: follower.directory + "/kpi.json") }
                #expect(ContinuousClock.now - stopped < .seconds(3), "the new leader writes snapshots (interval 1 s)")

                await follower.group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }

    /// A company import through one node reaches every node: their KPI stores, and their writers'
    /// meters, whose regions the readings after the import are booked under.
    @Test(.timeLimit(.minutes(3)))
    func aCompanyImportThroughOneNodeReachesEveryNodesFiguresAndWriter() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        try await withTemporaryDirectory { root in
            try FileManager.default.createDirectory(atPath: root + "/company", withIntermediateDirectories: true)
            try writeCSV(root + "/company", "customer_data.csv", ["CustomerID,Region,InstallationDate", "1,North,2023-01-05", "2,South,2023-01-05"])
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                let a = try await Self.start(address, directory: root + "/a", in: &tasks)
                let b = try await Self.start(address, directory: root + "/b", in: &tasks)
                try await waitUntil(timeout: .seconds(10)) { [a, b].allSatisfy { ($0.daemon.feed?.polls ?? 0) > 0 } }
                // Given a meter that reported through B before the company data named its customer
                let readingTime = WallClock.nowMs() - 60_000
                try await Self.send([Reading(meter: "MTR-000001", seq: 1, timestampMs: readingTime, kwh: 1)], to: b.ingestPort)
                #expect(try await Self.kpis(b, nowMs: WallClock.nowMs()).totalCustomers == 0)

                // When the company data is imported through A
                let report = try await CompanyImporter.importDirectory(root + "/company", through: .pipeline(a.daemon.pipeline))
                #expect(report.succeeded, "\(report.text)")

                // Then B's figures show it within a few polls
                try await waitUntil(timeout: .seconds(10)) { try await Self.kpis(b, nowMs: WallClock.nowMs()).totalCustomers == 2 }
                // and B's writer books the meter's next reading under its new region
                try await Self.send([Reading(meter: "MTR-000001", seq: 2, timestampMs: readingTime + 1000, kwh: 2)], to: b.ingestPort)
                let store = try StoreLocation.postgresql(address).open(logger: testLogger)
                func latencyCount(_ region: String) async throws -> Int {
                    try await store.latencyBuckets(from: Month(key: 200001), to: Month(key: 210012), region: region).map(\.count).reduce(0, +)
                }
                #expect(try await latencyCount("North") == 1)
                #expect(try await latencyCount(Region.unassigned) == 1)
                // and both nodes answer the same figures
                try await waitUntil(timeout: .seconds(10)) {
                    let at = WallClock.nowMs()
                    return try sameFigures(
                        try AnswerEncoder.json(try await Self.kpis(a, nowMs: at)), try AnswerEncoder.json(try await Self.kpis(b, nowMs: at)))
                }

                await a.group.triggerGracefulShutdown()
                await b.group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func whenTheLeadersLeaseConnectionDiesAnotherNodeLeadsWithinTwoIntervals() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let stores = [
            try PostgreSQLMeterStore(address: address, logger: testLogger), try PostgreSQLMeterStore(address: address, logger: testLogger),
        ]
        // Long enough that a loaded machine's scheduling (up to a second seen in the parallel pg
        // pass beside a benchmark) does not decide the outcome; the bound below is in intervals.
        let interval = Duration.seconds(1)
        let leases = stores.map { SingletonLease(lock: $0.makeSingletonLock(), interval: interval, logger: testLogger) }
        try await withRunningServices(leases) {
            // Given one leader
            try await waitUntil(timeout: .seconds(10)) { leases.filter(\.isLeader).count == 1 }
            // When the server ends the leader's lease session (as it does when a node dies or its network goes)
            let killed = try await stores[0].firstColumnText(
                """
                SELECT pg_terminate_backend(pid)::text FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objid = \(PostgreSQLSingletonLock.key & 0xFFFF_FFFF)
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """)
            #expect(killed == ["true"])
            let cut = ContinuousClock.now
            // Then a node leads again (the other one, or the same after it reconnects) within two intervals, and never two at once
            try await Task.sleep(for: .milliseconds(50))
            try await waitUntil(timeout: .seconds(10)) {
                #expect(leases.filter(\.isLeader).count <= 1)
                return leases.filter(\.isLeader).count == 1
            }
            #expect(ContinuousClock.now - cut < interval * 2 + .milliseconds(500))
        }
    }
}

extension MultiNodeTests {
    /// A lease connection the network black-holes (no answer, no reset) must not stop a node from
    /// trying again: its try gives up after three intervals and the next one uses a new connection.
    @Test(.timeLimit(.minutes(2)))
    func aNodeWhoseLeaseConnectionIsBlackHoledTriesAgainOnANewOne() async throws {
        let server = try await PostgresTestServer.shared()
        let database = try await server.createDatabase().database
        try await BlackHoleProxy.with(upstreamPort: server.port) { proxy in
            let viaProxy = server.proxiedAddress(database: database, proxy: proxy)
            let store = try PostgreSQLMeterStore(address: viaProxy, logger: testLogger)
            let observer = try PostgreSQLMeterStore(address: server.tcpAddress(database: database, password: server.password), logger: testLogger)
            let interval = Duration.milliseconds(250)
            let lease = SingletonLease(lock: store.makeSingletonLock(), interval: interval, logger: testLogger)
            try await withRunningServices([lease]) {
                // Given the node leads through the proxy
                try await waitUntil(timeout: .seconds(10)) { lease.isLeader }
                // When the path loses its lease connection's flow, and the server, as TCP keepalive
                // would in the end, drops that session and with it the lock
                proxy.blackHoleExisting()
                try await waitUntil(timeout: .seconds(5)) { !lease.isLeader }
                let killed = try await observer.firstColumnText(
                    """
                    SELECT pg_terminate_backend(pid)::text FROM pg_locks
                    WHERE locktype = 'advisory' AND granted AND objid = \(PostgreSQLSingletonLock.key & 0xFFFF_FFFF)
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    """)
                #expect(killed == ["true"])
                // Then the node leads again on a new connection, well before TCP would have given up
                try await waitUntil(timeout: .seconds(10)) { lease.isLeader }
            }
        }
    }

    @Test(.timeLimit(.minutes(2)))
    func theFeedDeliversAnotherNodesCommitOnceAndANodeThatFellBehindThePruneReloads() async throws {
        let address = try await PostgresTestServer.shared().createDatabase()
        let writerNode = try Node(address)
        let reader = try PostgreSQLMeterStore(address: address, logger: testLogger)
        let feed = try #require(reader.makeCommitFeed())
        // Given a node that follows the feed from now on
        #expect(try await feed.poll().restarted, "the first poll starts the feed")
        #expect(try await feed.poll().deltas.isEmpty)
        let own = try #require(writerNode.store.makeCommitFeed())
        _ = try await own.poll()

        // When another node commits, it is delivered once, with its transaction id and started days
        _ = try writerNode.commit((1...3).map { Self.reading(meter: 1, seq: $0) })
        let poll = try await feed.poll()
        #expect(!poll.restarted)
        let delta = try #require(poll.deltas.first)
        #expect(poll.deltas.count == 1)
        #expect(delta.commitXid != nil)
        let sent: [Double] = (1...3).map { Self.reading(meter: 1, seq: $0).kwh }
        let folded: [Double] = delta.months.map(\.kwh)
        #expect(abs(folded.reduce(0, +) - sent.reduce(0, +)) < 1e-12)
        #expect(delta.startedDays.count == 1)
        #expect(try await feed.poll().deltas.isEmpty, "and never again")
        #expect(try await own.poll().deltas.isEmpty, "a node's own commits are not fed back to it")
        // When the leader prunes rows this node may not have read (here: everything, as if it had
        // not polled for longer than the retention)
        _ = try writerNode.commit((4...5).map { Self.reading(meter: 1, seq: $0) })
        #expect(try await feed.prune(keepingMs: -60_000) >= 1)
        // Then it says so, and a KPI store following it reloads
        #expect(try await feed.poll().restarted)
    }
}

extension MultiNodeTests {
    /// Two real meterd processes on one database; the leader is SIGKILLed.
    @Test(.timeLimit(.minutes(2)))
    func whenTheLeaderProcessIsKilledTheOtherNodeTakesOverAndBothAnswerTheSameKPIs() async throws {
        let server = try await PostgresTestServer.shared()
        let address = try await server.createDatabase()
        let url = server.socketURL(address)
        try await withTemporaryDirectory { root in
            let nodes = try ["a", "b"].map { try MeterdUnderTest.start(dataDirectory: root + "/" + $0, arguments: ["--store", url]) }
            defer { for node in nodes { node.process.stop() } }
            var ports: [(ingest: Int, http: Int)] = []
            for node in nodes { ports.append(try await node.ports()) }
            func leads(_ index: Int) async throws -> Bool {
                try await httpGet(port: ports[index].http, path: "/metrics").body.contains("\nmeterd_singleton_leader 1")
            }
            // Given one leader
            var leader = -1
            try await waitUntil(timeout: .seconds(15)) {
                let flags = [try await leads(0), try await leads(1)]
                leader = flags.firstIndex(of: true) ?? -1
                return flags.filter { $0 }.count == 1
            }
            let follower = 1 - leader

            // When readings go through the follower, both nodes' KPIs count them within a few seconds
            let now = WallClock.nowMs()
            try await Self.send(
                (1...20).map { Reading(meter: "MTR-P", seq: $0, timestampMs: now - 60_000 + $0, kwh: 0.5) }, to: ports[follower].ingest)
            func consumption(_ index: Int) async throws -> Double? {
                let body = try await httpGet(port: ports[index].http, path: "/api/kpi").body
                let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
                return object?["total_consumption_kwh"] as? Double
            }
            try await waitUntil(timeout: .seconds(10)) {
                let leaderSees = try await consumption(leader)
                let followerSees = try await consumption(follower)
                return leaderSees == 10 && followerSees == 10
            }

            // When the leader is killed, the other node leads within a few seconds and says so
            nodes[leader].process.stop()
            let killed = ContinuousClock.now
            try await waitUntil(timeout: .seconds(15)) { try await leads(follower) }
            #expect(ContinuousClock.now - killed < .seconds(3), "the lease moved within 3 lease intervals (0.5 s) plus a scrape")
            // The lease changes its state, then logs: the line follows within moments.
            try await waitUntil(timeout: .seconds(5)) { nodes[follower].process.output.contains("This node now does the singleton work") }
            #expect(try await consumption(follower) == 10)
            #expect(try await nodes[follower].terminate() == 0)
        }
    }
}

/// The commit feed's pieces that need no database.
@Suite struct MultiNodeFeedTests {
    @Test func aSnapshotSeesWhatCommittedBeforeItAndNothingInProgressOrLater() throws {
        let snapshot = try #require(CommitSnapshot("100:110:103,107"))
        #expect(snapshot.sees(99))
        #expect(snapshot.sees(100))
        #expect(!snapshot.sees(103))
        #expect(snapshot.sees(105))
        #expect(!snapshot.sees(107))
        #expect(!snapshot.sees(110))
        #expect(!snapshot.sees(200))
        #expect(snapshot.description == "100:110:103,107")
        #expect(CommitSnapshot("5:5:")?.inProgress.isEmpty == true)
        #expect(CommitSnapshot("x:5:") == nil)
    }

    @Test func aDeltaTravelsThroughTheFeedUnchanged() throws {
        var month = AggregateDelta.Month(meterID: 42, month: 202_611)
        month.kwh = 1.25
        month.revenue = 0.3125
        month.readings = 5
        month.faults = 1
        month.good = 3
        month.fair = 1
        month.poor = 1
        month.latencySumMs = 12_345
        month.latencyMaxMs = 9_000
        var estimated = AggregateDelta.Month(meterID: -1, month: 202_610)
        estimated.estimated = 2
        estimated.estimatedKwh = 0.75
        estimated.kwh = 0.75
        let delta = AggregateDelta(
            months: [month, estimated],
            days: [ReadDayFacts.MeterDay(meterID: 42, day: Day(key: 20_261_130), readings: 5, spacingSumMs: 3_600_000, spacingCount: 4)],
            meterReads: [.init(meterID: 42, name: "MTR-ünï", firstDay: 20_261_130)], firstReceivedMs: 1_795_000_000_000,
            lastReceivedMs: 1_795_000_100_000)
        let decoded = try CommitFeedPayload.decode(CommitFeedPayload.encode(delta))
        #expect(decoded.months.map(\.meterID) == [42, -1])
        #expect(decoded.months[0].kwh == 1.25 && decoded.months[0].revenue == 0.3125 && decoded.months[0].readings == 5)
        #expect(decoded.months[0].faults == 1 && decoded.months[0].good == 3 && decoded.months[0].fair == 1 && decoded.months[0].poor == 1)
        #expect(decoded.months[0].latencySumMs == 12_345 && decoded.months[0].latencyMaxMs == 9_000 && decoded.months[0].estimated == 0)
        #expect(decoded.months[1].estimated == 2 && decoded.months[1].estimatedKwh == 0.75 && decoded.months[1].month == 202_610)
        #expect(decoded.days == delta.days)
        #expect(decoded.meterReads.map(\.name) == ["MTR-ünï"] && decoded.meterReads[0].firstDay == 20_261_130)
        #expect(decoded.firstReceivedMs == 1_795_000_000_000 && decoded.lastReceivedMs == 1_795_000_100_000)
        #expect(try CommitFeedPayload.decode(CommitFeedPayload.encode(AggregateDelta())).isEmpty)
        #expect(throws: CommitFeedError.self) { try CommitFeedPayload.decode(CommitFeedPayload.encode(delta).dropLast()) }
    }
}

/// What the commit feed costs the writer and each other node per reading, in this build
/// (`METERD_MEASURE=1 swift test --filter CommitFeedCostMeasurement`).
@Suite(.enabled(if: ProcessInfo.processInfo.environment["METERD_MEASURE"] == "1"))
struct CommitFeedCostMeasurement {
    @Test func encodeAndDecodeCostPerReading() throws {
        // A batch of 5,000 readings over 1,000 meters, as CommitCostMeasurement commits.
        let meters = 1_000
        let readings = 5_000
        var delta = AggregateDelta()
        for meter in 0..<meters {
            var month = AggregateDelta.Month(meterID: Int64(100_000 + meter), month: 202_611)
            month.kwh = 1.25
            month.revenue = 0.31
            month.readings = readings / meters
            month.good = readings / meters
            month.latencySumMs = 5_000
            month.latencyMaxMs = 1_000
            delta.months.append(month)
            delta.days.append(
                ReadDayFacts.MeterDay(
                    meterID: Int64(100_000 + meter), day: Day(key: 20_261_130), readings: 5, spacingSumMs: 3_600_000, spacingCount: 4))
            delta.meterReads.append(.init(meterID: Int64(100_000 + meter), name: String(format: "MTR-%06d", meter), firstDay: 20_261_130))
        }
        delta.firstReceivedMs = WallClock.nowMs()
        delta.lastReceivedMs = WallClock.nowMs()
        let rounds = 50
        var bytes: [UInt8] = []
        let encodeStart = ContinuousClock.now
        for _ in 0..<rounds { bytes = CommitFeedPayload.encode(delta) }
        let encoded = ContinuousClock.now - encodeStart
        let decodeStart = ContinuousClock.now
        for _ in 0..<rounds { _ = try CommitFeedPayload.decode(bytes) }
        let decoded = ContinuousClock.now - decodeStart
        let perMillion = 1_000_000 / Double(readings * rounds)
        func seconds(_ duration: Duration) -> Double { Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18 }
        print(
            "commit feed: \(bytes.count) bytes per commit of \(readings) readings over \(meters) meters "
                + "(\(Double(bytes.count) / Double(readings)) per reading); CPU-s per million readings: encode \(seconds(encoded) * perMillion), "
                + "decode (each other node) \(seconds(decoded) * perMillion)")
    }
}
