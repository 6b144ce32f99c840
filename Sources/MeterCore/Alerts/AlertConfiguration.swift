import Foundation

/// The `[alert]` section of the config file (SPEC.md section 11): which rules run, their
/// thresholds, and where alerts are POSTed.
///
/// Each key is written `alert.KEY` inside `[alert]` (`webhook = …`), or `alert_KEY` anywhere
/// (`alert_webhook = …`, the spelling SPEC.md uses); both set the same value.
package struct AlertConfiguration: Sendable, Equatable {
    /// Rules that run; all of them by default.
    package var rules = Set(AlertRule.allCases)
    /// Time between two evaluations of the polled rules (every rule except `inactive`, which follows
    /// the liveness sweep).
    package var interval: Duration = .seconds(10)
    /// `read_success`: a region's read success rate on the last complete day below this fires (0–1).
    package var readSuccessMinimum = 0.9
    /// `validation_flags`: fires above this many validation flags per reading stored in the window…
    package var flagRate = 0.05
    /// …over this window…
    package var flagWindow: Duration = .seconds(3600)
    /// …once the window holds at least this many readings, so a handful of readings cannot fire it.
    package var flagMinimumReadings = 100
    /// `ingest_busy`: the write queue full for longer than this fires.
    package var busyAfter: Duration = .seconds(60)
    /// `writer`: no commit and no idle check for this long counts as unhealthy, as commits failing do.
    package var writerStallAfter: Duration = .seconds(30)
    /// URLs each alert is POSTed to as JSON, when it fires and when it is resolved.
    package var webhooks: [URL] = []
    /// Deliveries waiting per webhook; when full, the oldest is dropped (and counted).
    package var webhookQueue = 1000
    /// Longest wait for one POST to be answered.
    package var webhookTimeout: Duration = .seconds(10)
    /// First retry delay after a failed POST; each further failure doubles it…
    package var webhookRetryInitial: Duration = .seconds(1)
    /// …up to this.
    package var webhookRetryMaximum: Duration = .seconds(300)
    /// Resolved alerts kept in the database (the newest); firing ones are always kept.
    package var history = 10_000

    package init() {}

    /// Keys of the section (after `alert.` or `alert_`), with what each means, for `--help` and README.
    package static let keys: [(key: String, help: String)] = [
        (
            "rules",
            "Comma-separated rules that run (default all): inactive, faulty, read_success, validation_flags, writer, ingest_busy; none for no rules."
        ),
        ("interval", "Seconds between evaluations of the rules other than inactive, which follows the liveness sweep (default 10)."),
        ("read_success_min", "read_success fires for a region whose read success rate on the last complete day is below this (0-1, default 0.9)."),
        ("flag_rate", "validation_flags fires above this many validation flags per reading stored in flag_window (0-1, default 0.05)."),
        ("flag_window", "Seconds of readings validation_flags looks at (default 3600)."),
        ("flag_min_readings", "Readings flag_window must hold before validation_flags can fire (default 100)."),
        ("busy_seconds", "ingest_busy fires when the write queue has been full (meters told busy) for longer than this (default 60)."),
        ("writer_stall_seconds", "writer fires when commits fail, or the writer shows no progress for this long (default 30)."),
        (
            "webhook",
            "URL (http:// or https://) each alert is POSTed to as JSON when it fires and when it resolves; repeat the key or separate URLs by commas for several."
        ),
        ("webhook_queue", "Deliveries kept per webhook while it is down; beyond it the oldest is dropped and counted (default 1000)."),
        ("webhook_timeout", "Seconds one POST may take (default 10)."),
        ("webhook_retry", "Seconds before the first retry of a failed POST; each failure doubles it (default 1)."),
        ("webhook_retry_max", "Longest wait between retries, in seconds (default 300)."),
        ("history", "Resolved alerts kept in the database, newest first (default 10000)."),
    ]

    /// Applies one key of the section (without its `alert.`/`alert_` prefix).
    package mutating func set(_ name: String, to value: String, key: String) throws(ConfigurationError) {
        func seconds(_ maximum: Int = 31_536_000) throws(ConfigurationError) -> Duration {
            guard let number = Int(value), number > 0, number <= maximum else {
                throw ConfigurationError(key: key, "expected whole seconds between 1 and \(maximum), got \"\(value)\"")
            }
            return .seconds(number)
        }
        func share() throws(ConfigurationError) -> Double {
            guard let number = Double(value), number.isFinite, (0...1).contains(number) else {
                throw ConfigurationError(key: key, "expected a share from 0 to 1, got \"\(value)\"")
            }
            return number
        }
        func count(_ maximum: Int) throws(ConfigurationError) -> Int {
            guard let number = Int(value), number > 0, number <= maximum else {
                throw ConfigurationError(key: key, "expected a whole number between 1 and \(maximum), got \"\(value)\"")
            }
            return number
        }
        switch name {
        case "rules":
            let names = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            if names == ["none"] {
                self.rules = []
                return
            }
            var rules = Set<AlertRule>()
            for name in names {
                guard let rule = AlertRule(rawValue: name) else {
                    throw ConfigurationError(
                        key: key, "unknown rule \"\(name)\" (expected \(AlertRule.allCases.map(\.rawValue).joined(separator: ", ")) or none)")
                }
                rules.insert(rule)
            }
            guard !rules.isEmpty else { throw ConfigurationError(key: key, "expected rule names or none, got an empty value") }
            self.rules = rules
        case "interval": self.interval = try seconds(3600)
        case "read_success_min": self.readSuccessMinimum = try share()
        case "flag_rate": self.flagRate = try share()
        case "flag_window": self.flagWindow = try seconds(604_800)
        case "flag_min_readings": self.flagMinimumReadings = try count(100_000_000)
        case "busy_seconds": self.busyAfter = try seconds()
        case "writer_stall_seconds": self.writerStallAfter = try seconds()
        case "webhook":
            // Repeated keys add URLs, so a config file can list one per line.
            for text in value.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !text.isEmpty {
                guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
                    let host = url.host, !host.isEmpty
                else {
                    throw ConfigurationError(key: key, "expected an http:// or https:// URL, got \"\(text)\"")
                }
                if !self.webhooks.contains(url) { self.webhooks.append(url) }
            }
        case "webhook_queue": self.webhookQueue = try count(10_000_000)
        case "webhook_timeout": self.webhookTimeout = try seconds(3600)
        case "webhook_retry": self.webhookRetryInitial = try seconds(86_400)
        case "webhook_retry_max": self.webhookRetryMaximum = try seconds(86_400)
        case "history": self.history = try count(100_000_000)
        default:
            throw ConfigurationError(key: key, "unknown alert setting (see meterd --help for the alert keys)")
        }
    }
}
