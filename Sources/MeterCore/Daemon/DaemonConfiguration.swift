import Foundation
import NIOCore

/// A host and port to listen on, written `HOST:PORT` (`[::1]:7700` for IPv6).
package struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    package var host: String
    package var port: Int

    package init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    package init?(_ text: String) {
        let host: Substring
        let port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let number = Int(port), (0...65_535).contains(number) else { return nil }
        self.init(host: String(host), port: number)
    }

    package var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }

    /// Whether only this machine can connect: `localhost`, 127.0.0.0/8 or `::1`. Any other name
    /// or address (`0.0.0.0`, `::`, a host name) may be reachable from the network.
    package var isLoopback: Bool {
        if self.host == "localhost" { return true }
        return LocalSocketAddress.isLoopback(numericHost: self.host)
    }
}

/// A configuration value that could not be used; names the key, as the operator wrote it.
package struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    package var key: String
    package var message: String

    package init(key: String, _ message: String) {
        self.key = key
        self.message = message
    }

    package var description: String { "invalid configuration: \(self.key): \(self.message)" }
}

/// Everything meterd is told at start-up (SPEC.md section 7): defaults, then the config file, then flags.
package struct DaemonConfiguration: Sendable {
    package var dataDirectory = "./meterd-data"
    /// Where the status socket goes by default; the data directory unless systemd gives a runtime directory.
    package var runtimeDirectory: String?
    package var ingest = ListenAddress(host: "127.0.0.1", port: 7700)
    package var http = ListenAddress(host: "127.0.0.1", port: 8080)
    package var statusSocket: String?
    package var timeZone = TimeZone(identifier: "UTC")!
    package var inactiveAfterSeconds = 900
    package var snapshotIntervalSeconds = 60
    /// Several nodes on one store: how often a node tries to take (or confirms it holds) the singleton
    /// lease, and how often it reads the other nodes' commits. Not settings an operator needs; tests shorten them.
    package var singletonLeaseInterval: Duration = .milliseconds(500)
    package var commitFeedInterval: Duration = .seconds(1)
    /// KPI snapshots kept in the database.
    package var snapshotHistory = 1440
    /// A meter with this many faults in the KPI period is faulty…
    package var faultyFaults = 3
    /// …and so is one with this many `poor` months in it.
    package var faultyPoorMonths = 2
    package var durability = Durability.full
    /// `store`: where the data lives; `nil` is the default, `sqlite:<data_dir>/meterd.sqlite` (``storeLocation``).
    package var store: StoreLocation?
    package var pipeline = PipelineConfiguration()
    package var limits = LineLimits()

    /// The line limits the ingest server applies: ``limits``, keeping each reading's bytes when
    /// unknown meters are rejected, so the quarantine holds what the meter sent.
    package var ingestLimits: LineLimits {
        var limits = self.limits
        limits.keepsReadingBytes = self.unknownMeters == .reject
        return limits
    }
    /// Largest `kwh` one reading may carry (``MeteringRules/maximumKwh``, which also bounds a rollover).
    package var maximumKwh: Double {
        get { self.metering.maximumKwh }
        set { self.metering.maximumKwh = newValue }
    }
    /// Register readings, gap estimation and validation flags (SPEC.md section 11).
    package var metering = MeteringRules()
    package var maximumConnections = 50_000
    package var unknownMeters = UnknownMeterPolicy.register
    package var tariff = Tariff()
    /// Chart.js the dashboard serves at `/assets/chart.js` (Debian's libjs-chart.js); without the file
    /// the dashboard shows tables.
    package var dashboardChartJS = "/usr/share/javascript/chart.js/chart.min.js"
    /// `ingest_tls_cert`, `ingest_tls_key`: PEM files that turn TLS on for the ingest listener.
    package var ingestTLSCertificate: String?
    package var ingestTLSKey: String?
    /// `ingest_tls_client_ca`: meters must present a client certificate this CA signed.
    package var ingestTLSClientCA: String?
    /// `meter_auth`: whether a connection may send only for the meters its certificate covers.
    package var meterAuth = MeterAuthMode.none
    /// `http_users`: the file of dashboard and API users; without it HTTP asks nobody to log in.
    package var httpUsers: String?
    /// `http_session_ttl`: seconds a login lasts.
    package var httpSessionTTLSeconds = 28_800
    /// `metrics_token_file`: the bearer token `/metrics` asks for.
    package var metricsTokenFile: String?
    /// `http_tls_cert`, `http_tls_key`: PEM files that turn HTTPS on.
    package var httpTLSCertificate: String?
    package var httpTLSKey: String?
    /// `allow_insecure`: start even when a listener is open to the network without authentication.
    package var allowInsecure = false
    /// The `[alert]` section: rules, thresholds and webhooks (SPEC.md section 11).
    package var alerts = AlertConfiguration()

    package init() {}

    /// The HTTP listener's TLS files, when HTTPS is on.
    package var httpTLSFiles: IngestTLSFiles? {
        guard let certificate = self.httpTLSCertificate, let key = self.httpTLSKey else { return nil }
        return IngestTLSFiles(certificate: certificate, key: key)
    }

    /// The ingest listener's TLS files, when TLS is on.
    package var ingestTLSFiles: IngestTLSFiles? {
        guard let certificate = self.ingestTLSCertificate, let key = self.ingestTLSKey else { return nil }
        return IngestTLSFiles(certificate: certificate, key: key, clientCA: self.ingestTLSClientCA)
    }

    /// Checks that the security settings fit together (SPEC.md section 10); the files themselves
    /// are read when the daemon starts.
    package func validateSecurity() throws(ConfigurationError) {
        if (self.ingestTLSCertificate == nil) != (self.ingestTLSKey == nil) {
            throw ConfigurationError(
                key: self.ingestTLSCertificate == nil ? "ingest_tls_cert" : "ingest_tls_key",
                "ingest_tls_cert and ingest_tls_key go together: TLS needs the certificate and its key")
        }
        if self.ingestTLSClientCA != nil, self.ingestTLSCertificate == nil {
            throw ConfigurationError(
                key: "ingest_tls_client_ca", "needs ingest_tls_cert and ingest_tls_key: client certificates are checked in the TLS handshake")
        }
        if (self.httpTLSCertificate == nil) != (self.httpTLSKey == nil) {
            throw ConfigurationError(
                key: self.httpTLSCertificate == nil ? "http_tls_cert" : "http_tls_key",
                "http_tls_cert and http_tls_key go together: HTTPS needs the certificate and its key")
        }
        if self.meterAuth == .certificate, self.ingestTLSClientCA == nil {
            throw ConfigurationError(
                key: "meter_auth",
                "certificate needs ingest_tls_client_ca (with ingest_tls_cert and ingest_tls_key): meters prove who they are with client certificates"
            )
        }
    }

    /// Refuses listeners open to the network without authentication (SPEC.md section 10) unless
    /// `allow_insecure` is set: HTTP without `http_users`, ingest with `meter_auth = none`.
    ///
    /// - Parameter inheritedSockets: sockets systemd passed; their bound address counts, not the
    ///   configured one.
    package func validateExposure(inheritedSockets: InheritedSockets = InheritedSockets()) throws(ConfigurationError) {
        guard !self.allowInsecure else { return }
        if self.httpUsers == nil, !Self.isLoopback(inherited: inheritedSockets.http, configured: self.http) {
            throw ConfigurationError(
                key: "http",
                "\(Self.describe(inherited: inheritedSockets.http, configured: self.http)) is reachable from the network and no http_users are set, "
                    + "so anyone could read every figure: set http_users (meterctl user add), bind 127.0.0.1, or set allow_insecure = true")
        }
        if self.meterAuth == .none, !Self.isLoopback(inherited: inheritedSockets.ingest, configured: self.ingest) {
            throw ConfigurationError(
                key: "ingest",
                "\(Self.describe(inherited: inheritedSockets.ingest, configured: self.ingest)) is reachable from the network with meter_auth = none, "
                    + "so anyone could send readings for any meter: set meter_auth = certificate, bind 127.0.0.1, or set allow_insecure = true")
        }
    }

    private static func isLoopback(inherited: CInt?, configured: ListenAddress) -> Bool {
        if let inherited { return LocalSocketAddress.isLoopback(descriptor: inherited) }
        return configured.isLoopback
    }

    private static func describe(inherited: CInt?, configured: ListenAddress) -> String {
        if let inherited { return "the socket systemd passed (fd \(inherited), \(LocalSocketAddress.describe(descriptor: inherited)))" }
        return configured.description
    }

    /// Path of the SQLite database inside the data directory.
    package var databasePath: String { (self.dataDirectory as NSString).appendingPathComponent("meterd.sqlite") }

    /// Where the data lives: ``store``, or the SQLite file in the data directory.
    package var storeLocation: StoreLocation { self.store ?? .sqlite(path: self.databasePath) }

    /// Path of the status socket.
    package var statusSocketPath: String {
        self.statusSocket ?? ((self.runtimeDirectory ?? self.dataDirectory) as NSString).appendingPathComponent("status.sock")
    }

    /// Keys a config file and the command line may set, with what each means (for `--help` and README).
    package static let keys: [(key: String, help: String)] = [
        ("data_dir", "Directory of the database, kpi.json and ports.json (default ./meterd-data; $STATE_DIRECTORY under systemd)."),
        (
            "store",
            "sqlite:PATH (default sqlite:<data_dir>/meterd.sqlite) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?host=SOCKET-DIR]; "
                + "also $METERD_STORE."
        ),
        ("ingest", "HOST:PORT meters connect to (default 127.0.0.1:7700; port 0 picks a free one)."),
        ("http", "HOST:PORT of the dashboard, API and metrics (default 127.0.0.1:8080)."),
        ("status_socket", "Path of the status socket (default <runtime dir>/status.sock)."),
        ("timezone", "IANA time zone whose calendar months the aggregates follow (default UTC)."),
        ("inactive_after", "Seconds of silence after which a meter counts as inactive (default 900)."),
        ("snapshot_interval", "Seconds between KPI snapshots (default 60)."),
        ("snapshot_history", "KPI snapshots kept in the database (default 1440)."),
        ("faulty_faults", "Faults in the period from which a meter counts as faulty (default 3)."),
        ("faulty_poor_months", "Months of poor status in the period from which a meter counts as faulty (default 2)."),
        ("synchronous", "full (default: an acked reading survives power loss) or normal (survives a crash of meterd only)."),
        ("max_line_length", "Longest accepted line in bytes (default 4096)."),
        ("clock_skew", "Seconds a reading's ts may be ahead of the daemon's clock (default 300)."),
        ("max_kwh", "Largest kwh one reading may carry, and the largest difference a register rollover may make (default 1000)."),
        ("register_digits", "Whole digits of the meters' registers: they wrap to 0 after 10^N kWh (default 6)."),
        (
            "expected_interval",
            "Seconds between a meter's readings; register readings further apart are a gap spread over its months (default 900)."
        ),
        ("voltage_min", "Lowest healthy voltage; a reading below it is flagged (default 207)."),
        ("voltage_max", "Highest healthy voltage; a reading above it is flagged (default 253)."),
        ("spike_factor", "A reading's consumption above this many times the meter's trailing median is a spike (default 10)."),
        ("zero_days", "Days of zero consumption while reporting that raise a zero_run flag (default 3)."),
        ("max_connections", "Meter connections beyond this get too_many_connections and are closed (default 50000)."),
        ("idle_timeout", "Seconds after which a connection that sends nothing is closed (default 3600)."),
        ("unknown_meters", "register (default: keep them, unassigned) or reject (answer unknown_meter)."),
        ("queue_capacity", "Readings that may wait for the writer before meters are told busy (default 50000)."),
        ("commit_interval_ms", "Shortest time between two commits in milliseconds (default 5)."),
        ("commit_max_readings", "Most readings in one transaction (default 5000)."),
        (
            "aggregate_interval_ms",
            "0 (default): monthly aggregates commit with their readings; N: under load they wait up to N ms, which saves CPU at many meters."
        ),
        (
            "dashboard_chartjs",
            "Chart.js file the dashboard serves (default /usr/share/javascript/chart.js/chart.min.js, "
                + "Debian's libjs-chart.js); without it the dashboard shows tables."
        ),
        ("ingest_tls_cert", "PEM certificate (then any intermediates) of the ingest listener; with ingest_tls_key, meters must speak TLS 1.2+."),
        ("ingest_tls_key", "PEM private key of ingest_tls_cert. SIGHUP reloads both (and the client CA) for new connections."),
        ("ingest_tls_client_ca", "PEM CA certificate(s): meters must present a client certificate signed by it."),
        (
            "meter_auth",
            "none (default) or certificate: a connection sends only for the meter its client certificate names, "
                + "or a concentrator's meters (concentrators.csv); needs ingest_tls_client_ca."
        ),
        ("http_users", "File of username:role:scope:bcrypt-hash lines (meterctl user add); with it the dashboard and API ask for a login."),
        ("http_session_ttl", "Seconds a dashboard login lasts (default 28800); sessions live in memory and end when meterd restarts."),
        ("metrics_token_file", "File holding the bearer token /metrics asks for; with http_users and no token, /metrics is closed."),
        ("http_tls_cert", "PEM certificate (then any intermediates) of the HTTP listener; with http_tls_key the dashboard is served over HTTPS."),
        ("http_tls_key", "PEM private key of http_tls_cert. SIGHUP reloads both for new connections."),
        (
            "allow_insecure",
            "true: start even when http binds a non-loopback address without http_users, or ingest one with meter_auth = none (default false)."
        ),
        ("tariff.default", "Currency units per kWh for live revenue (default 0.15)."),
        ("tariff.REGION", "Currency units per kWh in one region, e.g. tariff.North = 0.14."),
    ]

    /// Applies one setting by its key, validating the value.
    package mutating func set(_ key: String, to value: String) throws(ConfigurationError) {
        func positiveInt(_ maximum: Int = .max) throws(ConfigurationError) -> Int {
            guard let number = Int(value), number > 0, number <= maximum else {
                throw ConfigurationError(key: key, "expected a whole number between 1 and \(maximum), got \"\(value)\"")
            }
            return number
        }
        func positiveDouble() throws(ConfigurationError) -> Double {
            guard let number = Double(value), number.isFinite, number > 0 else {
                throw ConfigurationError(key: key, "expected a number greater than 0, got \"\(value)\"")
            }
            return number
        }
        func address() throws(ConfigurationError) -> ListenAddress {
            guard let address = ListenAddress(value) else {
                throw ConfigurationError(key: key, "expected HOST:PORT with a port from 0 to 65535, got \"\(value)\"")
            }
            return address
        }
        func path() throws(ConfigurationError) -> String {
            guard !value.isEmpty else { throw ConfigurationError(key: key, "expected a path, got an empty value") }
            return value
        }
        switch key {
        case "data_dir": self.dataDirectory = try path()
        case "store": self.store = try StoreLocation(parsing: value)
        case "runtime_dir": self.runtimeDirectory = try path()
        case "ingest": self.ingest = try address()
        case "http": self.http = try address()
        case "status_socket": self.statusSocket = try path()
        case "timezone":
            guard let zone = TimeZone(identifier: value), !value.isEmpty else {
                throw ConfigurationError(key: key, "unknown IANA time zone \"\(value)\" (for example Europe/Berlin)")
            }
            self.timeZone = zone
        case "inactive_after": self.inactiveAfterSeconds = try positiveInt(31_536_000)
        case "snapshot_interval": self.snapshotIntervalSeconds = try positiveInt(86_400)
        case "snapshot_history": self.snapshotHistory = try positiveInt(10_000_000)
        case "faulty_faults": self.faultyFaults = try positiveInt()
        case "faulty_poor_months": self.faultyPoorMonths = try positiveInt(1200)
        case "synchronous":
            guard let durability = Durability(rawValue: value.lowercased()) else {
                throw ConfigurationError(key: key, "expected full or normal, got \"\(value)\"")
            }
            self.durability = durability
        case "max_line_length": self.limits.maximumLineLength = try positiveInt(1 << 20)
        case "clock_skew": self.limits.clockSkewMs = Int64(try positiveInt(31_536_000)) * 1000
        case "max_kwh": self.maximumKwh = try positiveDouble()
        case "register_digits": self.metering.registerDigits = try positiveInt(15)
        case "expected_interval":
            self.metering.expectedIntervalMs = Int64(try positiveInt(31_536_000)) * 1000
            self.metering.configuredIntervalMs = self.metering.expectedIntervalMs
        case "voltage_min", "voltage_max":
            guard let volts = Double(value), volts.isFinite, ReadingParser.voltageRange.contains(volts) else {
                throw ConfigurationError(key: key, "expected volts between 0 and 1000, got \"\(value)\"")
            }
            if key == "voltage_min" { self.metering.voltageMinimum = volts } else { self.metering.voltageMaximum = volts }
        case "spike_factor": self.metering.spikeFactor = try positiveDouble()
        case "zero_days": self.metering.zeroDays = try positiveInt(366)
        case "max_connections": self.maximumConnections = try positiveInt(10_000_000)
        case "idle_timeout": self.limits.idleTimeout = .seconds(Int64(try positiveInt(31_536_000)))
        case "unknown_meters":
            guard let policy = UnknownMeterPolicy(rawValue: value.lowercased()) else {
                throw ConfigurationError(key: key, "expected register or reject, got \"\(value)\"")
            }
            self.unknownMeters = policy
        case "queue_capacity": self.pipeline.queueCapacity = try positiveInt(10_000_000)
        case "commit_interval_ms": self.pipeline.commitInterval = .milliseconds(try positiveInt(10_000))
        case "commit_max_readings": self.pipeline.maximumBatch = try positiveInt(1_000_000)
        case "aggregate_interval_ms":
            guard let milliseconds = Int(value), (0...60_000).contains(milliseconds) else {
                throw ConfigurationError(key: key, "expected a whole number of milliseconds from 0 to 60000, got \"\(value)\"")
            }
            self.pipeline.aggregateInterval = .milliseconds(milliseconds)
        case "dashboard_chartjs": self.dashboardChartJS = try path()
        case "ingest_tls_cert": self.ingestTLSCertificate = try path()
        case "ingest_tls_key": self.ingestTLSKey = try path()
        case "ingest_tls_client_ca": self.ingestTLSClientCA = try path()
        case "meter_auth":
            guard let mode = MeterAuthMode(rawValue: value.lowercased()) else {
                throw ConfigurationError(key: key, "expected none or certificate, got \"\(value)\"")
            }
            self.meterAuth = mode
        case "http_users": self.httpUsers = try path()
        case "http_session_ttl": self.httpSessionTTLSeconds = try positiveInt(31_536_000)
        case "metrics_token_file": self.metricsTokenFile = try path()
        case "http_tls_cert": self.httpTLSCertificate = try path()
        case "http_tls_key": self.httpTLSKey = try path()
        case "allow_insecure":
            switch value.lowercased() {
            case "true", "yes", "1": self.allowInsecure = true
            case "false", "no", "0": self.allowInsecure = false
            default: throw ConfigurationError(key: key, "expected true or false, got \"\(value)\"")
            }
        case _ where key.hasPrefix("alert.") || key.hasPrefix("alert_"):
            try self.alerts.set(String(key.dropFirst("alert.".count)), to: value, key: key)
        case "tariff.default": self.tariff.defaultRate = try positiveDouble()
        case _ where key.hasPrefix("tariff.") && key.count > "tariff.".count:
            self.tariff.regionRates[String(key.dropFirst("tariff.".count))] = try positiveDouble()
        default:
            throw ConfigurationError(key: key, "unknown setting (see meterd --help for the keys)")
        }
    }

    /// Reads a config file: `key = value` lines, `#` comments, and `[section]` headers that prefix
    /// the keys below them (`[tariff]` then `North = 0.14` sets `tariff.North`; `[alert]` then
    /// `webhook = …` sets `alert.webhook`, the same as `alert_webhook`). Values may be quoted.
    package mutating func load(configFile text: String, path: String) throws(ConfigurationError) {
        var section = ""
        // A key given twice is most likely an edit that meant to replace the first; which one wins
        // must not be left to the reader's guess.
        var seen: [String: Int] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let where_ = "\(path):\(index + 1)"
            var line = rawLine.trimmingCharacters(in: .whitespaces)
            if let hash = line.firstIndex(of: "#"), !line[..<hash].contains("\"") {
                line = String(line[..<hash]).trimmingCharacters(in: .whitespaces)
            }
            if line.isEmpty { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]"), line.count > 2 else { throw ConfigurationError(key: where_, "malformed section header \"\(line)\"") }
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw ConfigurationError(key: where_, "expected key = value, got \"\(line)\"")
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            let key = section.isEmpty ? name : "\(section).\(name)"
            // `alert_webhook` and `[alert] webhook` are one key; repeated webhooks add URLs.
            let canonical = key.hasPrefix("alert_") ? "alert." + key.dropFirst("alert_".count) : key
            if canonical != "alert.webhook", let earlier = seen.updateValue(index + 1, forKey: canonical) {
                throw ConfigurationError(key: key, "set twice (\(path):\(earlier) and \(where_)); keep one")
            }
            do {
                try self.set(key, to: value)
            } catch {
                throw ConfigurationError(key: key, "\(error.message) (\(where_))")
            }
        }
    }

    /// Builds the configuration: defaults, then systemd's directories, then the file, then flags.
    ///
    /// - Parameters:
    ///   - configFile: path of a config file, if one was given.
    ///   - overrides: settings from the command line, by key, applied last.
    ///   - environment: the process environment (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`, and
    ///     `METERD_STORE`, which overrides the file's `store` and yields to the flag).
    package static func resolve(
        configFile: String?, overrides: [(key: String, value: String)],
        environment: [String: String]
    ) throws(ConfigurationError) -> DaemonConfiguration {
        var configuration = DaemonConfiguration()
        // systemd may list several directories separated by ':'; the first is ours.
        if let state = environment["STATE_DIRECTORY"]?.split(separator: ":").first { configuration.dataDirectory = String(state) }
        if let runtime = environment["RUNTIME_DIRECTORY"]?.split(separator: ":").first { configuration.runtimeDirectory = String(runtime) }
        if let configFile {
            let bytes: Data
            do {
                bytes = try Data(contentsOf: URL(fileURLWithPath: configFile))
            } catch {
                throw ConfigurationError(key: "config", "cannot read \(configFile): \((error as NSError).localizedDescription)")
            }
            guard let text = String(bytes: bytes, encoding: .utf8) else {
                let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
                let bad = lines.firstIndex { String(bytes: $0, encoding: .utf8) == nil }.map { "\(configFile):\($0 + 1)" } ?? configFile
                throw ConfigurationError(key: "config", "\(bad) is not valid UTF-8; save the file as UTF-8 text")
            }
            try configuration.load(configFile: text, path: configFile)
        }
        if let store = environment["METERD_STORE"], !store.isEmpty {
            do {
                try configuration.set("store", to: store)
            } catch {
                throw ConfigurationError(key: "store", "\(error.message) (from METERD_STORE)")
            }
        }
        for (key, value) in overrides {
            try configuration.set(key, to: value)
        }
        try configuration.validateSecurity()
        guard configuration.alerts.webhookRetryInitial <= configuration.alerts.webhookRetryMaximum else {
            throw ConfigurationError(key: "alert_webhook_retry", "must not be above alert_webhook_retry_max")
        }
        guard configuration.metering.voltageMinimum < configuration.metering.voltageMaximum else {
            throw ConfigurationError(
                key: "voltage_min",
                "must be below voltage_max (\(configuration.metering.voltageMinimum) is not below \(configuration.metering.voltageMaximum))")
        }
        return configuration
    }
}
