import Hummingbird
import HTTPTypes
import NIOCore

/// `/metrics`, `/healthz` and `/readyz` (SPEC.md section 6).
///
/// ```swift
/// let router = Router(context: MeterRequestContext.self)
/// OperationsRoutes(metrics: metrics, reporter: reporter, readiness: readiness, writerHealth: health).register(on: router)
/// ```
package struct OperationsRoutes: Sendable {
    package let metrics: DaemonMetrics
    package let reporter: StatusReporter
    package let readiness: Readiness
    package let writerHealth: WriterHealth
    /// `/readyz` fails once the writer has finished no commit for this long, before the store's
    /// deadlines fail the commit (PostgreSQL: 10 s; SQLite's busy timeout: 10 s): a commit takes
    /// a second or two at most, and a load balancer should move meters away sooner.
    package let notReadyAfterStallMs: Int64

    package init(
        metrics: DaemonMetrics, reporter: StatusReporter, readiness: Readiness, writerHealth: WriterHealth, notReadyAfterStallMs: Int64 = 5_000
    ) {
        self.metrics = metrics
        self.reporter = reporter
        self.readiness = readiness
        self.writerHealth = writerHealth
        self.notReadyAfterStallMs = notReadyAfterStallMs
    }

    package func register(on router: Router<MeterRequestContext>) {
        router.get("metrics") { _, _ -> Response in
            let text = await self.metrics.scrape(reporter: self.reporter)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        router.get("healthz") { _, _ -> Response in
            // Alive as the watchdog sees it: waiting out an unreachable store is not a stall that
            // a restart would mend (`/readyz` says the node cannot take readings meanwhile).
            let age = self.writerHealth.progressAgeMs()
            let progressing = self.writerHealth.isMakingProgress()
            let healthy = progressing || self.writerHealth.isAlive()
            return Self.json(
                healthy ? .ok : .serviceUnavailable,
                .object([
                    ("status", .string(progressing ? "ok" : healthy ? "store unreachable, retrying" : "writer stalled")),
                    ("writer_progress_age_ms", .int(age)),
                    ("writer_failure", .optional(self.reporter.pipeline.failure) { .string($0) }),
                ]))
        }
        router.get("readyz") { _, _ -> Response in
            var reasons: [String] = []
            if self.readiness.isStopping { reasons.append("shutting down") }
            let pending = self.readiness.pendingListeners
            if !pending.isEmpty { reasons.append("listeners not bound: " + pending.sorted().joined(separator: ", ")) }
            if let failure = self.reporter.pipeline.failure {
                reasons.append(
                    self.reporter.pipeline.storeUnreachableSinceMs == nil ? "commits failing: \(failure)" : "store unreachable: \(failure)")
            } else if case let age = self.writerHealth.progressAgeMs(), age > self.notReadyAfterStallMs {
                // A commit the store has not answered yet (a held lock, a black-holed connection):
                // no failure to report until its deadline, but no reading is being acknowledged.
                reasons.append("writer stalled: no commit finished for \(age / 1000) s")
            }
            return Self.json(
                reasons.isEmpty ? .ok : .serviceUnavailable,
                .object([
                    ("status", .string(reasons.isEmpty ? "ready" : "not ready")),
                    ("reasons", .array(reasons.map { .string($0) })),
                ]))
        }
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: value.serialized + "\n")))
    }
}
