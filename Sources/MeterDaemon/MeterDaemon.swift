import ArgumentParser
import Foundation
import Logging
import MeterCore

@main
struct MeterDaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meterd",
        abstract: "Ingests smart-meter readings over TCP into SQLite and keeps the company's KPIs live.",
        discussion: """
            Meters send one JSON reading per line; meterd acknowledges each only after it is durably \
            committed. Settings come from defaults, then --config FILE, then these flags.

            Config file keys (key = value; [tariff] section for per-region rates):
            \(DaemonConfiguration.keys.map { "  \($0.key): \($0.help)" }.joined(separator: "\n"))

            Alert keys, in an [alert] section (webhook = URL) or anywhere as alert_KEY (alert_webhook = URL):
            \(AlertConfiguration.keys.map { "  \($0.key): \($0.help)" }.joined(separator: "\n"))
            """,
        version: MeterdVersion.current)

    @Option(help: "Config file of key = value lines (see the keys below).")
    var config: String?
    @Option(help: "Directory of the database, kpi.json and ports.json (default ./meterd-data).")
    var dataDir: String?
    @Option(
        help: ArgumentHelp(
            "sqlite:PATH (default sqlite:<data-dir>/meterd.sqlite) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?host=DIR]; also $METERD_STORE.",
            valueName: "url"))
    var store: String?
    @Option(help: ArgumentHelp("HOST:PORT meters connect to (default 127.0.0.1:7700; port 0 picks one).", valueName: "host:port"))
    var ingest: String?
    @Option(help: ArgumentHelp("HOST:PORT of the dashboard, API and metrics (default 127.0.0.1:8080).", valueName: "host:port"))
    var http: String?
    @Option(help: "Path of the status socket (default <runtime dir>/status.sock).")
    var statusSocket: String?
    @Option(help: ArgumentHelp("IANA time zone of the calendar months (default UTC).", valueName: "iana-name"))
    var timezone: String?
    @Option(help: ArgumentHelp("Seconds of silence before a meter is inactive (default 900).", valueName: "seconds"))
    var inactiveAfter: String?
    @Option(help: ArgumentHelp("Seconds between KPI snapshots (default 60).", valueName: "seconds"))
    var snapshotInterval: String?
    @Option(help: "full (default; acked readings survive power loss) or normal (survive a crash of meterd only).")
    var synchronous: String?
    @Option(help: ArgumentHelp("Longest accepted line in bytes (default 4096).", valueName: "bytes"))
    var maxLineLength: String?
    @Option(help: ArgumentHelp("Seconds a reading's ts may be ahead of the daemon's clock (default 300).", valueName: "seconds"))
    var clockSkew: String?
    @Option(help: ArgumentHelp("Largest kwh one reading may carry (default 1000).", valueName: "kwh"))
    var maxKwh: String?
    @Option(help: ArgumentHelp("Whole digits of the meters' registers; they wrap after 10^N kWh (default 6).", valueName: "n"))
    var registerDigits: String?
    @Option(help: ArgumentHelp("Seconds between a meter's readings; longer gaps are spread over their months (default 900).", valueName: "seconds"))
    var expectedInterval: String?
    @Option(help: ArgumentHelp("Lowest healthy voltage; below it a reading is flagged (default 207).", valueName: "volts"))
    var voltageMin: String?
    @Option(help: ArgumentHelp("Highest healthy voltage; above it a reading is flagged (default 253).", valueName: "volts"))
    var voltageMax: String?
    @Option(help: ArgumentHelp("Consumption above this many times the meter's trailing median is a spike (default 10).", valueName: "factor"))
    var spikeFactor: String?
    @Option(help: ArgumentHelp("Days of zero consumption while reporting that raise a zero_run flag (default 3).", valueName: "days"))
    var zeroDays: String?
    @Option(help: ArgumentHelp("Meter connections beyond this are told too_many_connections (default 50000).", valueName: "n"))
    var maxConnections: String?
    @Option(help: ArgumentHelp("Seconds after which a connection that sends nothing is closed (default 3600).", valueName: "seconds"))
    var idleTimeout: String?
    @Option(help: "register (default) or reject readings from meters the company data does not know.")
    var unknownMeters: String?
    @Option(help: ArgumentHelp("Readings waiting for the writer before meters are told busy (default 50000).", valueName: "readings"))
    var queueCapacity: String?
    @Option(help: ArgumentHelp("Shortest time between two commits (default 5).", valueName: "ms"))
    var commitIntervalMs: String?
    @Option(
        help: ArgumentHelp("0 (default): aggregates commit with their readings; N: under load they wait up to N ms, saving CPU.", valueName: "ms"))
    var aggregateIntervalMs: String?
    @Option(
        name: .customLong("dashboard-chartjs"),
        help: ArgumentHelp(
            "Chart.js file the dashboard serves (default Debian's /usr/share/javascript/chart.js/chart.min.js).",
            valueName: "path"))
    var dashboardChartJS: String?
    @Option(
        name: .customLong("ingest-tls-cert"),
        help: ArgumentHelp("PEM certificate of the ingest listener; with --ingest-tls-key meters must use TLS.", valueName: "file"))
    var ingestTLSCert: String?
    @Option(
        name: .customLong("ingest-tls-key"), help: ArgumentHelp("PEM private key of --ingest-tls-cert (SIGHUP reloads both).", valueName: "file"))
    var ingestTLSKey: String?
    @Option(
        name: .customLong("ingest-tls-client-ca"),
        help: ArgumentHelp("PEM CA that must have signed each meter's client certificate.", valueName: "file"))
    var ingestTLSClientCA: String?
    @Option(help: "none (default) or certificate: a connection sends only for the meters its client certificate covers.")
    var meterAuth: String?
    @Option(
        help: ArgumentHelp(
            "File of username:role:scope:bcrypt-hash lines (meterctl user add); the dashboard then asks for a login.", valueName: "file"))
    var httpUsers: String?
    @Option(help: ArgumentHelp("Seconds a dashboard login lasts (default 28800).", valueName: "seconds"))
    var httpSessionTTL: String?
    @Option(help: ArgumentHelp("File holding the bearer token /metrics asks for.", valueName: "file"))
    var metricsTokenFile: String?
    @Option(
        name: .customLong("http-tls-cert"),
        help: ArgumentHelp("PEM certificate of the HTTP listener; with --http-tls-key the dashboard is served over HTTPS.", valueName: "file"))
    var httpTLSCert: String?
    @Option(name: .customLong("http-tls-key"), help: ArgumentHelp("PEM private key of --http-tls-cert (SIGHUP reloads both).", valueName: "file"))
    var httpTLSKey: String?
    @Option(
        help: ArgumentHelp(
            "true: start even when --http binds a non-loopback address without users, or --ingest one with meter_auth none (default false).",
            valueName: "bool"))
    var allowInsecure: String?
    @Option(help: "Minimum log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String = "info"
    @Option(help: "Where logs go: auto (default: journald when systemd started meterd, else stderr), journald or stderr.")
    var logBackend: String = "auto"

    func run() async throws {
        guard let level = Logger.Level(rawValue: self.logLevel) else {
            Self.fail(
                ConfigurationError(key: "log_level", "expected trace, debug, info, notice, warning, error or critical, got \"\(self.logLevel)\""))
        }
        let environment = ProcessInfo.processInfo.environment
        let backend: LogBackend
        switch self.logBackend {
        case "auto": backend = LogBackend.detect(environment: environment)
        case let name:
            guard let chosen = LogBackend(rawValue: name) else {
                Self.fail(ConfigurationError(key: "log_backend", "expected auto, journald or stderr, got \"\(name)\""))
            }
            backend = chosen
        }
        switch backend {
        case .journald: LoggingSystem.bootstrap { JournalLogHandler(label: $0) }
        case .stderr: LoggingSystem.bootstrap(StreamLogHandler.standardError)
        }
        var logger = Logger(label: "meterd")
        logger.logLevel = level

        // Taken before anything else can open a file descriptor over them.
        let (sockets, ignored) = Systemd.takeListenedSockets()
        if !ignored.isEmpty {
            logger.warning(
                "Ignoring sockets passed by systemd with unknown names", metadata: ["systemd.fdnames": "\(ignored.joined(separator: ","))"])
        }
        if !sockets.isEmpty {
            logger.info(
                "Using sockets passed by systemd",
                metadata: [
                    "systemd.ingest": "\(sockets.ingest.map(String.init) ?? "-")", "systemd.status": "\(sockets.status.map(String.init) ?? "-")",
                    "systemd.http": "\(sockets.http.map(String.init) ?? "-")",
                ])
        }
        let daemonEnvironment = DaemonEnvironment(inheritedSockets: sockets, watchdogInterval: Systemd.watchdogInterval())

        let flags: [(String, String?)] = [
            ("data_dir", self.dataDir), ("store", self.store), ("ingest", self.ingest), ("http", self.http), ("status_socket", self.statusSocket),
            ("timezone", self.timezone), ("inactive_after", self.inactiveAfter), ("snapshot_interval", self.snapshotInterval),
            ("synchronous", self.synchronous), ("max_line_length", self.maxLineLength), ("clock_skew", self.clockSkew),
            ("max_kwh", self.maxKwh), ("register_digits", self.registerDigits), ("expected_interval", self.expectedInterval),
            ("voltage_min", self.voltageMin), ("voltage_max", self.voltageMax), ("spike_factor", self.spikeFactor),
            ("zero_days", self.zeroDays), ("max_connections", self.maxConnections), ("idle_timeout", self.idleTimeout),
            ("unknown_meters", self.unknownMeters), ("queue_capacity", self.queueCapacity),
            ("commit_interval_ms", self.commitIntervalMs), ("aggregate_interval_ms", self.aggregateIntervalMs),
            ("dashboard_chartjs", self.dashboardChartJS), ("ingest_tls_cert", self.ingestTLSCert), ("ingest_tls_key", self.ingestTLSKey),
            ("ingest_tls_client_ca", self.ingestTLSClientCA), ("meter_auth", self.meterAuth),
            ("http_users", self.httpUsers), ("http_session_ttl", self.httpSessionTTL), ("metrics_token_file", self.metricsTokenFile),
            ("http_tls_cert", self.httpTLSCert), ("http_tls_key", self.httpTLSKey), ("allow_insecure", self.allowInsecure),
        ]
        var configuration: DaemonConfiguration
        do {
            configuration = try DaemonConfiguration.resolve(
                configFile: self.config, overrides: flags.compactMap { key, value in value.map { (key, $0) } },
                environment: environment)
        } catch {
            Self.fail(error)
        }
        // One descriptor per meter connection, plus the database, listeners and clients: past the
        // limit accept() would fail silently, so meters beyond it are told too_many_connections instead.
        let limit = OpenFileLimit.raise(toAtLeast: configuration.maximumConnections + 1_024)
        let configuredConnections = configuration.maximumConnections
        if limit < configuredConnections + 1_024 { configuration.maximumConnections = max(1, limit - 1_024) }
        let daemon: MeterCore.MeterDaemon
        do {
            daemon = try MeterCore.MeterDaemon(configuration: configuration, logger: logger, environment: daemonEnvironment)
        } catch {
            Self.fail(error)
        }
        if configuration.maximumConnections < configuredConnections {
            logger.notice(
                "max_connections lowered to fit the open-file limit",
                metadata: ["limit.nofile": "\(limit)", "max_connections": "\(configuration.maximumConnections)"])
        }
        do {
            try await daemon.run()
        } catch let error as ListenError {
            Self.fail(error)
        } catch {
            FileHandle.standardError.write(Data("meterd: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }

    /// One line naming the problem, then exit 2: systemd and scripts see a clear failure.
    static func fail(_ error: any Error) -> Never {
        FileHandle.standardError.write(Data("meterd: \(error)\n".utf8))
        Foundation.exit(2)
    }
}
