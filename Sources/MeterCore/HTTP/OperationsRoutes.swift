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

    package init(metrics: DaemonMetrics, reporter: StatusReporter, readiness: Readiness, writerHealth: WriterHealth) {
        self.metrics = metrics
        self.reporter = reporter
        self.readiness = readiness
        self.writerHealth = writerHealth
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
            } else if let stall = self.reporter.pipeline.stallDescription() {
                // Nothing has failed yet, but nothing is acknowledged either: a load balancer
                // should move meters away before the store's deadline fails the commit.
                reasons.append(stall)
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
