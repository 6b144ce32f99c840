import Foundation
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import Testing

@testable import MeterCore

/// A webhook for tests: a real HTTP server on a loopback port that records every POST body
/// (parsed as an alert) and answers 200.
final class WebhookReceiver: Sendable {
    private let received: NIOLockedValueBox<[AlertAnswer]>
    private let group: ServiceGroup
    private let task: Task<Void, any Error>
    let port: Int

    /// Starts listening on `port` (0 picks a free one).
    static func start(port: Int = 0) async throws -> WebhookReceiver {
        let received = NIOLockedValueBox<[AlertAnswer]>([])
        let router = Router()
        router.post("hook") { request, _ -> HTTPResponse.Status in
            let body = try await request.body.collect(upTo: 1 << 20)
            let alert = try JSONDecoder().decode(AlertAnswer.self, from: Data(String(buffer: body).utf8))
            received.withLockedValue { $0.append(alert) }
            return .ok
        }
        let (ports, sink) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)),
            onServerRunning: { channel in sink.yield(channel.localAddress?.port ?? 0) }, logger: testLogger)
        let group = ServiceGroup(services: [app], logger: testLogger)
        let task = Task {
            do {
                try await group.run()
            } catch {
                sink.finish()  // a port that cannot be bound fails the test instead of hanging it
                throw error
            }
        }
        var iterator = ports.makeAsyncIterator()
        let bound = try #require(await iterator.next())
        return WebhookReceiver(received: received, group: group, task: task, port: bound)
    }

    private init(received: NIOLockedValueBox<[AlertAnswer]>, group: ServiceGroup, task: Task<Void, any Error>, port: Int) {
        self.received = received
        self.group = group
        self.task = task
        self.port = port
    }

    var url: URL { URL(string: "http://127.0.0.1:\(self.port)/hook")! }

    /// Every alert POSTed so far, in arrival order.
    var alerts: [AlertAnswer] { self.received.withLockedValue { $0 } }

    /// Waits until `count` alerts arrived and returns them.
    func waitFor(_ count: Int, timeout: Duration = .seconds(60)) async throws -> [AlertAnswer] {
        try await waitUntil(timeout: timeout) { self.alerts.count >= count }
        return self.alerts
    }

    func stop() async throws {
        await self.group.triggerGracefulShutdown()
        try await self.task.value
    }
}

/// A loopback port nothing listens on: bound, then closed.
func unusedPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    _ = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// An alert configuration for tests: only `rules`, webhooks at `urls`, quick retries.
func alertConfiguration(_ rules: Set<AlertRule>, webhooks urls: [URL] = []) -> AlertConfiguration {
    var configuration = AlertConfiguration()
    configuration.rules = rules
    configuration.webhooks = urls
    configuration.webhookRetryInitial = .milliseconds(100)
    configuration.webhookRetryMaximum = .milliseconds(400)
    // Generous: a POST that times out after the webhook took it is sent again (at least once), and
    // the tests count deliveries exactly, also on a loaded machine.
    configuration.webhookTimeout = .seconds(60)
    return configuration
}

/// Runs a webhook notifier as a service around the body.
func withNotifier<T>(
    _ configuration: AlertConfiguration, statistics: AlertStatistics = AlertStatistics(), logger: Logger = testLogger,
    _ body: (WebhookNotifier) async throws -> T
) async throws -> T {
    let notifier = try WebhookNotifier(configuration: configuration, statistics: statistics, logger: logger)
    return try await withRunningServices([notifier]) { try await body(notifier) }
}

/// Turns a ``FailingWriter``'s failures on and off from the test.
final class FailSwitch: Sendable {
    private let on = Atomic<Bool>(false)
    var isOn: Bool {
        get { self.on.load(ordering: .relaxed) }
        set { self.on.store(newValue, ordering: .relaxed) }
    }
}

/// A store writer that passes everything to a real one; test writers override what they change.
class ForwardingWriter: MeterStoreWriter, @unchecked Sendable {
    let base: any MeterStoreWriter

    init(_ base: any MeterStoreWriter) { self.base = base }

    var commitListener: (any CommitListener)? {
        get { self.base.commitListener }
        set { self.base.commitListener = newValue }
    }
    var meterCount: Int { self.base.meterCount }
    var hasPendingAggregates: Bool { self.base.hasPendingAggregates }

    func commit(_ submissions: [IngestSubmission], deferAggregates: Bool) throws -> CommitResult {
        try self.base.commit(submissions, deferAggregates: deferAggregates)
    }
    func flushAggregates() throws { try self.base.flushAggregates() }
    func reloadMeters() throws { try self.base.reloadMeters() }
    func lostRace(_ error: any Error) -> Bool { self.base.lostRace(error) }
    func takeContestedMeters() -> Set<String> { self.base.takeContestedMeters() }
    func refreshMeters(named names: Set<String>) throws -> [String: Int64] { try self.base.refreshMeters(named: names) }
    func checkReachable() throws { try self.base.checkReachable() }
    func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag] {
        try self.base.flagInactive(candidates, cutoffMs: cutoffMs, startMs: startMs)
    }
    func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws {
        try self.base.recordSnapshot(document, period: period, generatedMs: generatedMs, history: history)
    }
    func importCompanyFile(_ path: String, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult {
        self.base.importCompanyFile(path, progress: progress)
    }
    func recordTimeZone(_ zone: TimeZone) throws { try self.base.recordTimeZone(zone) }
    func recordAlerts(_ alerts: [Alert], history: Int) throws { try self.base.recordAlerts(alerts, history: history) }
}

/// A store writer that fails every write while its switch is on, like a full disk, and otherwise
/// passes everything to the real one.
final class FailingWriter: ForwardingWriter, @unchecked Sendable {
    struct DiskFull: Error, CustomStringConvertible {
        var description: String { "database or disk is full" }
    }

    /// What a database server that went away makes the store throw.
    struct Unreachable: StoreReachabilityError, CustomStringConvertible {
        var meansStoreUnreachable: Bool { true }
        var description: String { "cannot connect to the database: connection refused" }
    }

    private let failure: FailSwitch
    private let unreachable: Bool

    /// - Parameter unreachable: fail as an unreachable server does, rather than as a full disk.
    init(_ base: any MeterStoreWriter, failure: FailSwitch, unreachable: Bool = false) {
        self.failure = failure
        self.unreachable = unreachable
        super.init(base)
    }

    private func check() throws {
        guard self.failure.isOn else { return }
        if self.unreachable { throw Unreachable() }
        throw DiskFull()
    }

    override func commit(_ submissions: [IngestSubmission], deferAggregates: Bool) throws -> CommitResult {
        try self.check()
        return try super.commit(submissions, deferAggregates: deferAggregates)
    }
    override func flushAggregates() throws {
        try self.check()
        try super.flushAggregates()
    }
    /// An unreachable server fails the idle writer's check too; a full disk does not show there.
    override func checkReachable() throws {
        if self.unreachable { try self.check() }
        try super.checkReachable()
    }
    override func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag] {
        try self.check()
        return try super.flagInactive(candidates, cutoffMs: cutoffMs, startMs: startMs)
    }
    override func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws {
        try self.check()
        try super.recordSnapshot(document, period: period, generatedMs: generatedMs, history: history)
    }
    override func recordTimeZone(_ zone: TimeZone) throws {
        try self.check()
        try super.recordTimeZone(zone)
    }
    override func recordAlerts(_ alerts: [Alert], history: Int) throws {
        try self.check()
        try super.recordAlerts(alerts, history: history)
    }
}
