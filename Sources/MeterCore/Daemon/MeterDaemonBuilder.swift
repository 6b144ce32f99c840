import Foundation
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import UnixSignals

/// The assembled daemon: its services, run together in one `ServiceGroup`.
package struct MeterDaemon: Sendable {
    package let configuration: DaemonConfiguration
    package let store: any MeterStore
    package let pipeline: IngestPipeline
    package let metrics: DaemonMetrics
    package let kpi: KPIEngine
    package let liveness: LivenessMonitor
    package let snapshots: SnapshotService
    package let alerts: AlertEngine
    /// Who does the singleton work when several nodes share the store (always this node on SQLite).
    package let lease: SingletonLease
    /// Folds the other nodes' commits into this node's KPIs; `nil` on a store of one node.
    package let feed: CommitFeedFollower?
    /// The live figures the status socket, `/metrics` and systemd report.
    package let reporter: StatusReporter
    /// The in-memory KPI stores the writer and the commit feed keep current.
    package let rollups: KPIRollups
    package let services: [any Service]
    /// This daemon's claim on its data directory, given up when it stops.
    private let dataDirectoryLock: DataDirectoryLock
    private let logger: Logger

    /// Opens the data directory and database and builds every service, without starting any.
    ///
    /// ```swift
    /// let daemon = try MeterDaemon(configuration: configuration, logger: logger)
    /// try await daemon.run()
    /// ```
    package init(
        configuration: DaemonConfiguration, logger: Logger, environment: DaemonEnvironment = DaemonEnvironment(),
        onIngestListening: @escaping @Sendable (SocketAddress) async -> Void = { _ in }
    ) throws {
        self.configuration = configuration
        self.logger = logger
        try configuration.validateSecurity()
        try configuration.validateExposure(inheritedSockets: environment.inheritedSockets)
        // Read before anything starts: a missing or mismatched file stops start-up with one line.
        let tls = try configuration.ingestTLSFiles.map { files throws(ConfigurationError) in try IngestTLS(files: files) }
        let httpTLS = try configuration.httpTLSFiles.map { files throws(ConfigurationError) in
            try IngestTLS(files: files, settingPrefix: "http_tls")
        }
        let users = try configuration.httpUsers.map { path throws(ConfigurationError) in try HTTPUserDirectory(path: path, logger: logger) }
        let metricsToken = try configuration.metricsTokenFile.map { path throws(ConfigurationError) in
            try HTTPAccessConfiguration.readMetricsToken(path: path)
        }
        do {
            try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        } catch {
            throw ConfigurationError(key: "data_dir", "cannot create \(configuration.dataDirectory): \(error.localizedDescription)")
        }
        // Before the database and ports.json: a second daemon on this directory must change nothing.
        self.dataDirectoryLock = try DataDirectoryLock(directory: configuration.dataDirectory)
        if environment.inheritedSockets.status == nil {
            try StatusSocketServer.checkPathIsFree(configuration.statusSocketPath)
        }
        let store = try configuration.storeLocation.open(
            durability: configuration.durability, integrityCheck: .alongsideStartUp, logger: logger)
        self.store = store
        let writer = try store.makeWriter(
            WriterSettings(
                timeZone: configuration.timeZone, tariff: configuration.tariff,
                unknownMeters: configuration.unknownMeters, metering: configuration.metering))
        // Offline tools (meterctl kpi --db) read the zone back, so they pick the same calendar months.
        try writer.recordTimeZone(configuration.timeZone)
        let rollups = KPIRollups(logger: logger)
        self.rollups = rollups
        // Several nodes on one store: one of them sweeps, snapshots and alerts; each follows the others' commits.
        let lock = store.makeSingletonLock()
        let lease = SingletonLease(lock: lock, interval: configuration.singletonLeaseInterval, logger: logger)
        self.lease = lease
        let metrics = DaemonMetrics()
        self.metrics = metrics
        writer.commitListener = CommitListeners([rollups, metrics])
        logger.info(
            "Database open",
            metadata: [
                "db.store": "\(store.location)", "db.meters": "\(writer.meterCount)",
                "db.synchronous": "\(configuration.durability.rawValue)",
            ])
        let pipeline = IngestPipeline(
            writer: writer, configuration: configuration.pipeline,
            logger: logger)
        self.pipeline = pipeline
        let portsPath = (configuration.dataDirectory as NSString).appendingPathComponent("ports.json")
        // A stale file from the last run would send scripts to a port nobody listens on.
        try? FileManager.default.removeItem(atPath: portsPath)
        let ports = ListenerPorts(path: portsPath, listeners: ["ingest", "http"], logger: logger)
        let readiness = Readiness(listeners: ["ingest", "status", "http"])
        let sockets = environment.inheritedSockets
        // Loaded now, so the first concentrator to connect finds its meters; imports refresh it.
        let concentrators = ConcentratorDirectory(try store.loadConcentratorAssignments())
        let feed = store.makeCommitFeed().map { source in
            CommitFeedFollower(
                feed: source, rollups: rollups, lease: lease, interval: configuration.commitFeedInterval, logger: logger,
                reloadCompanyData: {
                    try await pipeline.perform { writer in try writer.reloadMeters() }
                    concentrators.replace(with: try await store.concentratorAssignments())
                })
        }
        self.feed = feed
        if let tls {
            let loaded = tls.current
            logger.info(
                "Ingest TLS on",
                metadata: [
                    "tls.subject": "\(loaded.subject)",
                    "tls.not_after": "\(RFC3339.format(millisecondsSinceEpoch: loaded.notValidAfter * 1000))",
                    "tls.client_ca": "\(configuration.ingestTLSClientCA ?? "none")", "meter_auth": "\(configuration.meterAuth.rawValue)",
                    "concentrators": "\(concentrators.concentratorCount)",
                ])
            TLSReloader.warnIfExpiring(loaded, listener: .ingest(tls), logger: logger)
        }
        let ingest = IngestServer(
            configuration: IngestServerConfiguration(
                host: configuration.ingest.host, port: configuration.ingest.port,
                limits: configuration.ingestLimits, maximumKwh: configuration.maximumKwh,
                maximumConnections: configuration.maximumConnections, inheritedSocket: sockets.ingest,
                tls: tls, meterAuth: configuration.meterAuth, concentrators: concentrators,
                registerCapacity: configuration.metering.registerCapacity),
            pipeline: pipeline, logger: logger,
            onListening: { address in
                ports.record("ingest", port: address.port ?? 0)
                readiness.listenerBound("ingest")
                await onIngestListening(address)
            })

        // Operator interfaces: the status socket, HTTP and systemd all read the same live figures.
        let kpi = KPIEngine(store: store, rollups: rollups, settings: KPISettings(configuration))
        self.kpi = kpi
        // Alerts watch the pipeline, the KPI engine and the liveness sweep; the webhooks get what changes.
        let webhooks = try WebhookNotifier(configuration: configuration.alerts, statistics: metrics.alerts, logger: logger)
        let alerts = AlertEngine(
            configuration: configuration.alerts,
            sources: AlertSources(
                pipeline: pipeline, kpi: kpi, readSuccess: KPIReadSuccessRates(kpi: kpi), inactiveAfterSeconds: configuration.inactiveAfterSeconds),
            store: store, writer: .pipeline(pipeline), notifier: webhooks, statistics: metrics.alerts, logger: logger, lease: lease)
        self.alerts = alerts
        let liveness = LivenessMonitor(
            store: store, writer: .pipeline(pipeline), inactiveAfterSeconds: configuration.inactiveAfterSeconds,
            logger: logger, observer: alerts, lease: lease)
        self.liveness = liveness
        let snapshots = SnapshotService(
            engine: kpi, writer: .pipeline(pipeline),
            path: (configuration.dataDirectory as NSString).appendingPathComponent("kpi.json"),
            interval: .seconds(configuration.snapshotIntervalSeconds), history: configuration.snapshotHistory, logger: logger,
            beforeFirst: { await readiness.waitUntilListening() }, lease: lease)
        self.snapshots = snapshots
        let queries = DaemonOperatorQueries(
            store: store, writer: .pipeline(pipeline), kpi: kpi, snapshots: snapshots, concentrators: concentrators, alerts: alerts)
        let reporter = StatusReporter(pipeline: pipeline, store: store, queries: queries, lease: lock == nil ? nil : lease)
        self.reporter = reporter
        let writerHealth = WriterHealth(
            pipeline: pipeline,
            staleAfterMs: environment.watchdogInterval.map { $0.milliseconds / 2 } ?? 10_000)
        let status = StatusSocketServer(
            configuration: StatusSocketConfiguration(path: configuration.statusSocketPath, inheritedSocket: sockets.status),
            responder: StatusResponder(reporter: reporter), logger: logger,
            onListening: { readiness.listenerBound("status") })
        // Routes register here before the server is built; the dashboard and API add theirs the same way.
        // HEAD answers as GET does, without the body (load balancers check health with HEAD).
        let router = Router(context: MeterRequestContext.self, options: .autoGenerateHeadEndpoints)
        router.add(middleware: RouteProbeMiddleware())
        // Next, so its checks run in front of every route registered after it.
        HTTPAccess(
            configuration: HTTPAccessConfiguration(
                users: users, metricsToken: metricsToken, sessionTTL: .seconds(configuration.httpSessionTTLSeconds),
                secureCookies: httpTLS != nil),
            sessionStore: store.makeSessionStore(), logger: logger
        ).register(on: router)
        Self.logAccess(configuration, users: users, metricsToken: metricsToken, httpTLS: httpTLS, environment: environment, logger: logger)
        OperationsRoutes(metrics: metrics, reporter: reporter, readiness: readiness, writerHealth: writerHealth).register(on: router)
        AlertRoutes(engine: alerts, regionOfMeter: { name in try await store.meterRecord(named: name)?.region }).register(on: router)
        DashboardRoutes(
            queries: DashboardQueries(store: store, kpi: kpi, operatorQueries: queries), reporter: reporter,
            assets: DashboardAssets(chartJSPath: configuration.dashboardChartJS), logger: logger
        ).register(on: router)
        let http = HTTPServer(
            configuration: HTTPServerConfiguration(
                host: configuration.http.host, port: configuration.http.port,
                inheritedSocket: sockets.http, tls: httpTLS),
            router: router, logger: logger,
            onListening: { address in
                ports.record("http", port: address.port ?? 0)
                readiness.listenerBound("http")
            })
        let notifier = SystemdNotifier(
            configuration: SystemdNotifierConfiguration(watchdogInterval: environment.watchdogInterval),
            readiness: readiness, writerHealth: writerHealth, reporter: reporter, logger: logger)

        // Start order; shutdown runs in reverse: systemd hears STOPPING=1 first, operators' sockets
        // close, then the listener drains into a still-running writer.
        // The liveness, alert and snapshot services hand work to the writer, so they stop before it;
        // the webhooks outlive the alert engine, which hands them its last changes.
        var services: [any Service] = [pipeline, ingest]
        // SIGHUP reloads the certificates; without any it is logged and changes nothing, so that
        // `systemctl reload` (the unit's ExecReload) never ends meterd.
        let reloadable = [tls.map(TLSReloader.Listener.ingest), httpTLS.map(TLSReloader.Listener.https)].compactMap { $0 }
        services.append(TLSReloader(listeners: reloadable, logger: logger))
        // The lease starts before the services that ask it and stops after them; the feed follower needs no writer.
        services += [lease]
        if let feed { services.append(feed) }
        services += [webhooks, alerts, liveness, snapshots, http, status, notifier]
        self.services = services
    }

    /// Says at start-up who may use HTTP, and warns when `allow_insecure` lets a listener open to the network.
    private static func logAccess(
        _ configuration: DaemonConfiguration, users: HTTPUserDirectory?, metricsToken: String?, httpTLS: IngestTLS?,
        environment: DaemonEnvironment, logger: Logger
    ) {
        if let users {
            logger.info(
                "HTTP login required",
                metadata: [
                    "http.users": "\(users.count)", "http.users_file": "\(users.path)",
                    "http.session_ttl_s": "\(configuration.httpSessionTTLSeconds)", "http.metrics_token": "\(metricsToken != nil)",
                ])
            if metricsToken == nil { logger.notice("/metrics is closed: http_users is set but metrics_token_file is not") }
        }
        if let httpTLS {
            logger.info("HTTPS on", metadata: ["tls.subject": "\(httpTLS.current.subject)"])
            TLSReloader.warnIfExpiring(httpTLS.current, listener: .https(httpTLS), logger: logger)
        }
        var strict = configuration
        strict.allowInsecure = false
        do {
            try strict.validateExposure(inheritedSockets: environment.inheritedSockets)
        } catch {
            logger.warning(
                "Listening on the network without authentication because allow_insecure = true",
                metadata: ["setting": "\(error.key)", "reason": "\(error.message)"])
        }
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    package func run() async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: self.services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: self.logger))
        defer { self.dataDirectoryLock.release() }
        try await group.run()
        self.logger.info("meterd stopped")
    }
}

/// What the daemon learns from its process environment rather than its configuration:
/// systemd's sockets and watchdog. The executable fills it; tests leave it empty.
package struct DaemonEnvironment: Sendable {
    package var inheritedSockets: InheritedSockets
    package var watchdogInterval: Duration?

    package init(inheritedSockets: InheritedSockets = InheritedSockets(), watchdogInterval: Duration? = nil) {
        self.inheritedSockets = inheritedSockets
        self.watchdogInterval = watchdogInterval
    }
}

/// Records the ports bound and writes `<data-dir>/ports.json`, for scripts that asked for port 0.
final class ListenerPorts: Sendable {
    private let path: String
    private let listeners: Set<String>
    private let logger: Logger
    private let ports = NIOLockedValueBox<[String: Int]>([:])

    /// - Parameter listeners: the names the file appears with; it is first written when all are bound.
    init(path: String, listeners: Set<String>, logger: Logger) {
        self.path = path
        self.listeners = listeners
        self.logger = logger
    }

    func record(_ name: String, port: Int) {
        // Listeners bind on different threads: the write stays under the lock, or two writers could
        // leave a file without the other's port.
        self.ports.withLockedValue { ports in
            ports[name] = port
            // A script polls for the file and reads it once: it must not find only some of the ports.
            guard self.listeners.isSubset(of: ports.keys) else { return }
            let json = "{" + ports.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}\n"
            do {
                try AtomicFile.write(json, to: self.path)
            } catch {
                self.logger.error("Cannot write ports.json", metadata: ["error": "\(error)"])
            }
        }
    }

}
