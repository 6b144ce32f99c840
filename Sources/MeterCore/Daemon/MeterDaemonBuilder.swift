import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The assembled daemon: its services, run together in one `ServiceGroup`.
package struct MeterDaemon: Sendable {
    package let configuration: DaemonConfiguration
    package let database: MeterDatabase
    package let pipeline: IngestPipeline
    package let kpi: KPIEngine
    package let liveness: LivenessMonitor
    package let snapshots: SnapshotService
    package let services: [any Service]
    private let logger: Logger

    /// Opens the data directory and database and builds every service, without starting any.
    ///
    /// ```swift
    /// let daemon = try MeterDaemon(configuration: configuration, logger: logger)
    /// try await daemon.run()
    /// ```
    package init(configuration: DaemonConfiguration, logger: Logger,
                 onIngestListening: @escaping @Sendable (SocketAddress) async -> Void = { _ in }) throws {
        self.configuration = configuration
        self.logger = logger
        do {
            try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true)
        } catch {
            throw ConfigurationError(key: "data_dir", "cannot create \(configuration.dataDirectory): \(error.localizedDescription)")
        }
        let database = try MeterDatabase(path: configuration.databasePath, durability: configuration.durability)
        self.database = database
        let writer = try IngestWriter(database: database, calendar: MonthCalendar(timeZone: configuration.timeZone),
                                      tariff: configuration.tariff, unknownMeters: configuration.unknownMeters)
        let rollups = KPIRollups(database: database, timeZone: configuration.timeZone)
        writer.observer = rollups
        logger.info("Database open", metadata: ["db.path": "\(configuration.databasePath)", "db.meters": "\(writer.meterCount)",
                                                 "db.synchronous": "\(configuration.durability.rawValue)"])
        let pipeline = IngestPipeline(writer: writer, configuration: configuration.pipeline, logger: logger)
        self.pipeline = pipeline
        let portsPath = (configuration.dataDirectory as NSString).appendingPathComponent("ports.json")
        // A stale file from the last run would send scripts to a port nobody listens on.
        try? FileManager.default.removeItem(atPath: portsPath)
        let ports = ListenerPorts(path: portsPath, logger: logger)
        let ingest = IngestServer(
            configuration: IngestServerConfiguration(host: configuration.ingest.host, port: configuration.ingest.port,
                                                     limits: configuration.limits, maximumKwh: configuration.maximumKwh,
                                                     maximumConnections: configuration.maximumConnections),
            pipeline: pipeline, logger: logger,
            onListening: { address in
                ports.record("ingest", port: address.port ?? 0)
                await onIngestListening(address)
            })
        let kpi = KPIEngine(database: database, rollups: rollups, settings: KPISettings(configuration), pipeline: pipeline)
        self.kpi = kpi
        self.liveness = LivenessMonitor(database: database, pipeline: pipeline, inactiveAfterSeconds: configuration.inactiveAfterSeconds,
                                        logger: logger)
        self.snapshots = SnapshotService(
            engine: kpi, database: database, pipeline: pipeline,
            path: (configuration.dataDirectory as NSString).appendingPathComponent("kpi.json"),
            interval: .seconds(configuration.snapshotIntervalSeconds), history: configuration.snapshotHistory, logger: logger)
        // Start order; shutdown runs in reverse, so the listener drains into a still-running writer,
        // and the services that hand work to the writer stop before it.
        self.services = [pipeline, ingest, self.liveness, self.snapshots]
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    package func run() async throws {
        let group = ServiceGroup(configuration: .init(
            services: self.services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: self.logger))
        try await group.run()
        self.logger.info("meterd stopped")
    }
}

/// Records the ports bound and keeps `<data-dir>/ports.json` in step, for scripts that asked for port 0.
final class ListenerPorts: Sendable {
    private let path: String
    private let logger: Logger
    private let ports = NIOLockedValueBox<[String: Int]>([:])

    init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    func record(_ name: String, port: Int) {
        let json = self.ports.withLockedValue { ports -> String in
            ports[name] = port
            return "{" + ports.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}\n"
        }
        do {
            try AtomicFile.write(json, to: self.path)
        } catch {
            self.logger.error("Cannot write ports.json", metadata: ["error": "\(error)"])
        }
    }
}
