#if canImport(Glibc)
import Glibc
#endif
import Foundation
import GRDB
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

@testable import MeterCore

/// `/metrics`, `/healthz` and `/readyz`.
@Suite(.serialized)
struct MetricsTests {
    /// Runs `promtool check metrics` on an exposition; returns its exit status and output.
    static func promtool(_ exposition: String) throws -> (status: Int32, output: String) {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") else {
            Issue.record("promtool is missing: apt-get install -y prometheus")
            throw CancellationError()
        }
        let result = try runProgram(["/usr/bin/promtool", "check", "metrics"], input: exposition)
        return (result.status, result.stdout + result.stderr)
    }

    /// The value of one sample line, `name{labels} value`.
    static func sample(_ exposition: String, _ series: String) -> Double? {
        exposition.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last!) }
    }

    @Test(.timeLimit(.minutes(1)))
    func realDaemonExposesEveryMetricAndPromtoolAcceptsIt() async throws {
        try await withTemporaryDirectory { directory in
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let ports = try await meterd.ports()
            // Given three readings, one resent, one malformed line and one from the future.
            let client = try await LineClient(port: ports.ingest)
            let old = WallClock.nowMs() - 90_000
            try await client.send(
                [
                    readingLine(meter: "MTR-M1", seq: 1, timestampMs: old), readingLine(meter: "MTR-M1", seq: 2),
                    readingLine(meter: "MTR-M2", seq: 1),
                ].joined(separator: "\n") + "\n")
            try await waitUntil { try await ask(meterd.statusSocket, "status").contains(#""acks_total":2"#) }
            try await client.send(
                readingLine(meter: "MTR-M1", seq: 2) + "\nnope\n" + readingLine(meter: "MTR-M3", seq: 1, timestampMs: WallClock.nowMs() + 3_600_000)
                    + "\n")
            try await waitUntil { try await ask(meterd.statusSocket, "status").contains(#""duplicates_total":1"#) }
            // Meter counts are cached for two seconds; wait until they show both meters.
            try await waitUntil { try await ask(meterd.statusSocket, "status").contains(#""active":2"#) }

            let (status, body) = try await httpGet(port: ports.http, path: "/metrics")
            #expect(status == 200)
            #expect(Self.sample(body, "meterd_readings_total") == 3)
            #expect(Self.sample(body, "meterd_duplicates_total") == 1)
            #expect(Self.sample(body, "meterd_validation_flags_total") == 0)
            #expect((Self.sample(body, "meterd_acks_total") ?? 0) >= 3)
            #expect(Self.sample(body, #"meterd_rejects_total{code="invalid_json"}"#) == 1)
            #expect(Self.sample(body, #"meterd_rejects_total{code="clock_skew"}"#) == 1)
            #expect(Self.sample(body, #"meterd_rejects_total{code="line_too_long"}"#) == 0)
            #expect(Self.sample(body, "meterd_connections") == 1)
            #expect(Self.sample(body, "meterd_queue_depth") == 0)
            #expect(Self.sample(body, #"meterd_meters{state="active"}"#) == 2)
            #expect(Self.sample(body, #"meterd_meters{state="inactive"}"#) == 0)
            #expect(Self.sample(body, #"meterd_meters{state="faulty"}"#) == 0)
            #expect((Self.sample(body, "meterd_commit_duration_seconds_count") ?? 0) >= 2)
            #expect(Self.sample(body, "meterd_reading_latency_seconds_count") == 3)
            // The 90 s old reading lands above the 60 s bucket, the fresh ones below 1 s.
            #expect(Self.sample(body, #"meterd_reading_latency_seconds_bucket{le="60.0"}"#) == 2)
            #expect(Self.sample(body, #"meterd_reading_latency_seconds_bucket{le="300.0"}"#) == 3)
            #expect(body.contains("# HELP meterd_readings_total "))

            let check = try await offPool { try Self.promtool(body) }
            #expect(check.status == 0, "promtool: \(check.output)")
            #expect(check.output.isEmpty, "promtool: \(check.output)")

            // A second scrape adds only what is new.
            let again = try await httpGet(port: ports.http, path: "/metrics").body
            #expect(Self.sample(again, "meterd_readings_total") == 3)
            #expect(try await httpGet(port: ports.http, path: "/healthz").status == 200)
            #expect(try await httpGet(port: ports.http, path: "/readyz").status == 200)
            await client.close()
            #expect(try await meterd.terminate() == 0)
        }
    }

    /// HTTP as load balancers, probes and benchmark tools speak it: HEAD answers as GET without the
    /// body, a route asked with a method it lacks answers 405 with `Allow`, an unknown path a JSON
    /// 404, and an HTTP/1.0 request (no keep-alive) has its connection closed after the response.
    @Test(.timeLimit(.minutes(1)))
    func headMethodNotAllowedUnknownPathsAndHTTP10AnswerAsHTTPSays() async throws {
        try await withTemporaryDirectory { directory in
            let meterd = try MeterdUnderTest.start(dataDirectory: directory + "/data")
            defer { meterd.process.stop() }
            let http = try await meterd.ports().http

            let get = try await httpRequest(port: http, "/assets/dashboard.css")
            let head = try await httpRequest(port: http, "/assets/dashboard.css", method: "HEAD")
            #expect(get.status == 200 && head.status == 200)
            #expect(head.body.isEmpty)
            #expect(head.header("Content-Length") == get.header("Content-Length"), "\(head.headers)")
            #expect(get.body.count > 100)
            for path in ["/healthz", "/readyz", "/metrics"] {
                #expect(try await httpRequest(port: http, path, method: "HEAD").status == 200, "\(path)")
            }
            // A route's own 404 stays a 404 under HEAD (the body is what HEAD leaves out).
            #expect(try await httpRequest(port: http, "/api/meters/NO-SUCH-METER", method: "HEAD").status == 404)
            #expect(try await httpRequest(port: http, "/logout", method: "HEAD").header("Allow") == "POST")

            let post = try await httpRequest(port: http, "/api/kpi", method: "POST", body: "")
            #expect(post.status == 405)
            #expect(post.header("Allow") == "GET, HEAD")
            #expect(post.json["error"] as? String == "method_not_allowed", "\(post.body)")
            let delete = try await httpRequest(port: http, "/login", method: "DELETE")
            #expect(delete.status == 405)
            #expect(delete.header("Allow") == "GET, HEAD, POST")
            let unknown = try await httpRequest(port: http, "/api/nothing-here")
            #expect(unknown.status == 404)
            #expect(unknown.json["error"] as? String == "not_found", "\(unknown.body)")
            #expect(try await httpRequest(port: http, "/api/nothing-here", method: "POST", body: "").status == 404)

            // HTTP/1.0 without keep-alive: the answer, then the close, long before the 60 s idle timeout.
            let client = try await LineClient(port: http)
            try await client.send("GET /healthz HTTP/1.0\r\n\r\n")
            let started = ContinuousClock.now
            var lines: [String] = []
            while let line = try await client.readLine(timeout: .seconds(15)) { lines.append(line) }
            #expect(lines.first?.hasPrefix("HTTP/1.1 200") == true, "\(lines)")
            #expect(lines.last?.contains(#""status":"ok""#) == true, "\(lines)")
            #expect(ContinuousClock.now - started < .seconds(10))
            await client.close()
            #expect(try await meterd.terminate() == 0)
        }
    }

    @Test func promtoolRejectsABrokenExposition() async throws {
        // The check above can fail: promtool does complain about bad metrics.
        let check = try await offPool { try Self.promtool("# TYPE meterd_readings counter\nmeterd_readings 1\n") }
        #expect(check.status != 0 || !check.output.isEmpty)
    }

    @Test(.timeLimit(.minutes(1)))
    func readinessAndHealthFollowListenersShutdownAndTheWriter() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let queries = try await makeOperatorQueries(store: harness.store, writer: .pipeline(harness.pipeline), directory: directory)
                let reporter = StatusReporter(pipeline: harness.pipeline, store: harness.store, queries: queries)
                let readiness = Readiness(listeners: ["ingest", "http"])
                let health = WriterHealth(pipeline: harness.pipeline, staleAfterMs: 2_000)
                let router = Router(context: MeterRequestContext.self)
                OperationsRoutes(metrics: DaemonMetrics(), reporter: reporter, readiness: readiness, writerHealth: health).register(on: router)
                let app = Application(router: router)
                try await app.test(.router) { client in
                    // Not ready until every listener is bound.
                    try await client.execute(uri: "/readyz", method: .get) { response in
                        #expect(response.status == .serviceUnavailable)
                        #expect(String(buffer: response.body).contains("listeners not bound: http, ingest"))
                    }
                    readiness.listenerBound("ingest")
                    readiness.listenerBound("http")
                    try await client.execute(uri: "/readyz", method: .get) { response in
                        #expect(response.status == .ok)
                    }
                    try await client.execute(uri: "/healthz", method: .get) { response in
                        #expect(response.status == .ok)
                    }

                    // A writer that cannot commit: unhealthy once its progress is older than the limit.
                    var configuration = Configuration()
                    configuration.allowsUnsafeTransactions = true
                    let blocker = try DatabaseQueue(path: directory + "/meterd.sqlite", configuration: configuration)
                    try await blocker.writeWithoutTransaction { db in try db.execute(sql: "BEGIN EXCLUSIVE") }
                    let meter = try await LineClient(port: harness.port)
                    try await meter.send(readingLine(meter: "MTR-H", seq: 1) + "\n")
                    try await waitUntil {
                        try await client.execute(uri: "/healthz", method: .get) { $0.status } == .serviceUnavailable
                    }
                    // and not ready either, once its commit has waited past the limit without failing yet (busy timeout 10 s)
                    try await waitUntil(timeout: .seconds(8)) {
                        try await client.execute(uri: "/readyz", method: .get) { response in
                            response.status == .serviceUnavailable
                                && String(buffer: response.body).contains("writer stalled: no commit finished for ")
                        }
                    }
                    // and the status socket's answer and systemd's status line say so too
                    let stalled = await reporter.status()
                    #expect(!stalled.writer.healthy)
                    #expect(stalled.writer.failure?.hasPrefix("writer stalled: no commit finished for ") == true, "\(stalled.writer)")
                    #expect(await reporter.systemdStatus().contains("; writer stalled: no commit finished for "))
                    try await blocker.writeWithoutTransaction { db in try db.execute(sql: "ROLLBACK") }
                    _ = try await meter.readLine(timeout: .seconds(30))
                    try await waitUntil {
                        try await client.execute(uri: "/healthz", method: .get) { $0.status } == .ok
                    }
                    try await client.execute(uri: "/readyz", method: .get) { response in
                        #expect(response.status == .ok)
                    }
                    await meter.close()

                    readiness.markStopping()
                    try await client.execute(uri: "/readyz", method: .get) { response in
                        #expect(response.status == .serviceUnavailable)
                        #expect(String(buffer: response.body).contains("shutting down"))
                    }
                }
            }
        }
    }

    @Test func countersOnlyGrowByWhatIsNew() async throws {
        try await withTemporaryDirectory { directory in
            try await IngestHarness.with(directory: directory) { harness in
                let metrics = DaemonMetrics()
                let reporter = StatusReporter(
                    pipeline: harness.pipeline, store: harness.store,
                    queries: try await makeOperatorQueries(
                        store: harness.store, writer: .pipeline(harness.pipeline),
                        directory: directory, cacheTTLms: 2_000))
                harness.pipeline.statistics.countReject(.lineTooLong, count: 2)
                var stored = CommitResult()
                stored.latenciesMs = [10, 20_000]
                metrics.didStore(stored, duration: .milliseconds(3))
                let first = await metrics.scrape(reporter: reporter)
                #expect(Self.sample(first, #"meterd_rejects_total{code="line_too_long"}"#) == 2)
                #expect(Self.sample(first, #"meterd_commit_duration_seconds_bucket{le="0.005"}"#) == 1)
                #expect(Self.sample(first, #"meterd_commit_duration_seconds_bucket{le="0.002"}"#) == 0)
                #expect(Self.sample(first, #"meterd_reading_latency_seconds_bucket{le="30.0"}"#) == 2)
                #expect(Self.sample(first, #"meterd_reading_latency_seconds_bucket{le="10.0"}"#) == 1)
                harness.pipeline.statistics.countReject(.lineTooLong)
                let second = await metrics.scrape(reporter: reporter)
                #expect(Self.sample(second, #"meterd_rejects_total{code="line_too_long"}"#) == 3)
            }
        }
    }
}
