import CoreMetrics
import Metrics
import Prometheus
import Synchronization

/// meterd's Prometheus metrics (SPEC.md section 6, `/metrics`), kept through swift-metrics.
///
/// Counters that the ingest path already keeps as atomics are brought up to date when scraped;
/// commit durations and reading latencies are recorded per commit, as one of the writer's
/// ``CommitListener``s.
package final class DaemonMetrics: CommitListener {
    package let registry: PrometheusCollectorRegistry
    /// The factory behind every metric here, with each metric's help text; the executable may
    /// bootstrap `MetricsSystem` with it so libraries report into the same registry.
    package let factory: PrometheusHelpFactory

    private let readings: CoreMetrics.Counter
    private let acks: CoreMetrics.Counter
    private let duplicates: CoreMetrics.Counter
    private let validationFlags: CoreMetrics.Counter
    private let busySignals: CoreMetrics.Counter
    private let commits: CoreMetrics.Counter
    private let commitFailures: CoreMetrics.Counter
    private let tlsHandshakeFailures: CoreMetrics.Counter
    private let rejects: [RejectionCode: CoreMetrics.Counter]
    private let connections: CoreMetrics.Gauge
    private let queueDepth: CoreMetrics.Gauge
    private let databaseBytes: CoreMetrics.Gauge
    private let writerHealthy: CoreMetrics.Gauge
    private let lastCommitAge: CoreMetrics.Gauge
    private let uptime: CoreMetrics.Gauge
    private let meters: [String: CoreMetrics.Gauge]
    private let readSuccess: CoreMetrics.Gauge
    /// Per region, made when a region first shows up.
    private let regionReadSuccess = Mutex<[String: CoreMetrics.Gauge]>([:])
    private let commitDuration: CoreMetrics.Timer
    private let readingLatency: CoreMetrics.Recorder
    /// What the alert engine and its webhooks report; the daemon hands it to both.
    package let alerts = AlertStatistics()
    private let alertsFiring: [AlertRule: CoreMetrics.Gauge]
    private let webhookDeliveries: CoreMetrics.Counter
    private let webhookFailures: CoreMetrics.Counter
    private let webhookDropped: CoreMetrics.Counter
    private let webhookQueue: CoreMetrics.Gauge
    private let singletonLeader: CoreMetrics.Gauge
    private let lostRaces: CoreMetrics.Counter

    /// Counter values already reported, so each scrape adds only what is new.
    private let reported = Mutex<[String: Int]>([:])

    package static let help: [String: String] = [
        "meterd_readings_total": "Readings committed to the database (duplicates excluded).",
        "meterd_acks_total": "Acknowledgement lines sent to meters.",
        "meterd_duplicates_total": "Resent readings recognised as already committed (acked, not stored again).",
        "meterd_rejects_total": "Lines rejected, by error code.",
        "meterd_validation_flags_total": "Validation flags raised by stored readings (spike, zero_run, register_reset, clock_backwards, voltage).",
        "meterd_busy_signals_total": "Times a connection was told busy because the write queue was full or commits were failing.",
        "meterd_commits_total": "Group commits of the write pipeline.",
        "meterd_commit_failures_total":
            "Commit attempts that failed and were retried after a delay (store unreachable, disk full); lost races are counted apart.",
        "meterd_tls_handshake_failures_total":
            "TLS handshakes on the ingest port that failed (no, an expired or an untrusted client certificate; not TLS).",
        "meterd_connections": "Meter connections open now.",
        "meterd_queue_depth": "Readings waiting for the writer.",
        "meterd_database_bytes": "Size of the SQLite database and its WAL.",
        "meterd_writer_healthy": "1 while the write pipeline commits without error, 0 while commits fail.",
        "meterd_last_commit_age_seconds": "Seconds since the last commit.",
        "meterd_uptime_seconds": "Seconds since meterd started.",
        "meterd_meters": "Meters by liveness state (active, inactive, faulty).",
        "meterd_read_success_rate":
            "Today's read success rate so far: the share of installed meters with at least one reading today (0-1).",
        "meterd_region_read_success_rate": "Today's read success rate so far, per region (0-1).",
        "meterd_commit_duration_seconds": "Time one group commit took, from first write to durable commit.",
        "meterd_reading_latency_seconds": "Reading latency: daemon receive time minus the reading's ts.",
        "meterd_alerts_firing": "Alerts firing now, by rule (SPEC.md section 11).",
        "meterd_alert_webhook_deliveries_total": "Alert notifications a webhook accepted (2xx).",
        "meterd_alert_webhook_failures_total": "Alert webhook POSTs that failed and were retried later.",
        "meterd_alert_webhook_dropped_total": "Alert notifications dropped because a webhook's queue was full (the alerts stay in the database).",
        "meterd_alert_webhook_queue": "Alert notifications waiting for their webhooks.",
        "meterd_commit_lost_races_total":
            "Commits rolled back and retried at once because another node's writer committed some of the same meters first.",
        "meterd_singleton_leader":
            "1 while this node does the singleton work (liveness sweeps, KPI snapshots, alert rules); always 1 on a store of one node.",
    ]

    package init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let factory = PrometheusHelpFactory(
            registry: registry, help: Self.help,
            durationBuckets: [
                "meterd_commit_duration_seconds": [
                    .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                    .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                    .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(10),
                ]
            ],
            valueBuckets: [
                "meterd_reading_latency_seconds": [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86_400]
            ])
        self.factory = factory
        self.readings = CoreMetrics.Counter(label: "meterd_readings_total", factory: factory)
        self.acks = CoreMetrics.Counter(label: "meterd_acks_total", factory: factory)
        self.duplicates = CoreMetrics.Counter(label: "meterd_duplicates_total", factory: factory)
        self.validationFlags = CoreMetrics.Counter(label: "meterd_validation_flags_total", factory: factory)
        self.busySignals = CoreMetrics.Counter(label: "meterd_busy_signals_total", factory: factory)
        self.commits = CoreMetrics.Counter(label: "meterd_commits_total", factory: factory)
        self.commitFailures = CoreMetrics.Counter(label: "meterd_commit_failures_total", factory: factory)
        self.tlsHandshakeFailures = CoreMetrics.Counter(label: "meterd_tls_handshake_failures_total", factory: factory)
        self.rejects = Dictionary(
            uniqueKeysWithValues: RejectionCode.allCases.map { code in
                (code, CoreMetrics.Counter(label: "meterd_rejects_total", dimensions: [("code", code.rawValue)], factory: factory))
            })
        self.connections = CoreMetrics.Gauge(label: "meterd_connections", factory: factory)
        self.queueDepth = CoreMetrics.Gauge(label: "meterd_queue_depth", factory: factory)
        self.databaseBytes = CoreMetrics.Gauge(label: "meterd_database_bytes", factory: factory)
        self.writerHealthy = CoreMetrics.Gauge(label: "meterd_writer_healthy", factory: factory)
        self.lastCommitAge = CoreMetrics.Gauge(label: "meterd_last_commit_age_seconds", factory: factory)
        self.uptime = CoreMetrics.Gauge(label: "meterd_uptime_seconds", factory: factory)
        self.meters = Dictionary(
            uniqueKeysWithValues: ["active", "inactive", "faulty"].map { state in
                (state, CoreMetrics.Gauge(label: "meterd_meters", dimensions: [("state", state)], factory: factory))
            })
        self.readSuccess = CoreMetrics.Gauge(label: "meterd_read_success_rate", factory: factory)
        self.commitDuration = CoreMetrics.Timer(label: "meterd_commit_duration_seconds", factory: factory)
        self.readingLatency = CoreMetrics.Recorder(label: "meterd_reading_latency_seconds", aggregate: true, factory: factory)
        self.alertsFiring = Dictionary(
            uniqueKeysWithValues: AlertRule.allCases.map { rule in
                (rule, CoreMetrics.Gauge(label: "meterd_alerts_firing", dimensions: [("rule", rule.rawValue)], factory: factory))
            })
        self.webhookDeliveries = CoreMetrics.Counter(label: "meterd_alert_webhook_deliveries_total", factory: factory)
        self.webhookFailures = CoreMetrics.Counter(label: "meterd_alert_webhook_failures_total", factory: factory)
        self.webhookDropped = CoreMetrics.Counter(label: "meterd_alert_webhook_dropped_total", factory: factory)
        self.webhookQueue = CoreMetrics.Gauge(label: "meterd_alert_webhook_queue", factory: factory)
        self.singletonLeader = CoreMetrics.Gauge(label: "meterd_singleton_leader", factory: factory)
        self.lostRaces = CoreMetrics.Counter(label: "meterd_commit_lost_races_total", factory: factory)
    }

    /// Records one commit; called on the writer thread, so it only touches the histograms.
    package func didStore(_ result: CommitResult, duration: Duration) {
        self.commitDuration.recordNanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
        for latency in result.latenciesMs {
            self.readingLatency.record(Double(latency) / 1000)
        }
    }

    /// Brings counters and gauges up to date from the live figures, then renders the
    /// Prometheus text format.
    package func scrape(reporter: StatusReporter, nowMs: Int64 = WallClock.nowMs()) async -> String {
        let statistics = reporter.pipeline.statistics
        var totals: [(String, Int, CoreMetrics.Counter)] = [
            ("readings", statistics.stored.load(ordering: .relaxed), self.readings),
            ("acks", statistics.acks.load(ordering: .relaxed), self.acks),
            ("duplicates", statistics.duplicates.load(ordering: .relaxed), self.duplicates),
            ("flags", statistics.validationFlags.load(ordering: .relaxed), self.validationFlags),
            ("busy", statistics.busySignals.load(ordering: .relaxed), self.busySignals),
            ("commits", statistics.commits.load(ordering: .relaxed), self.commits),
            ("commit_failures", statistics.commitFailures.load(ordering: .relaxed), self.commitFailures),
            ("lost_races", statistics.lostRaces.load(ordering: .relaxed), self.lostRaces),
            ("tls_handshake_failures", statistics.tlsHandshakeFailures.load(ordering: .relaxed), self.tlsHandshakeFailures),
            ("webhook_deliveries", self.alerts.webhookDeliveries.load(ordering: .relaxed), self.webhookDeliveries),
            ("webhook_failures", self.alerts.webhookFailures.load(ordering: .relaxed), self.webhookFailures),
            ("webhook_dropped", self.alerts.webhookDropped.load(ordering: .relaxed), self.webhookDropped),
        ]
        let rejects = statistics.rejectsByCode
        for (code, counter) in self.rejects {
            totals.append(("reject.\(code.rawValue)", rejects[code] ?? 0, counter))
        }
        self.reported.withLock { reported in
            for (key, total, counter) in totals {
                let delta = total - reported[key, default: 0]
                if delta > 0 {
                    counter.increment(by: delta)
                    reported[key] = total
                }
            }
        }
        for (rule, gauge) in self.alertsFiring { gauge.record(self.alerts.firing(rule)) }
        self.webhookQueue.record(self.alerts.webhookQueued.load(ordering: .relaxed))
        self.singletonLeader.record(reporter.lease?.isLeader ?? true ? 1 : 0)
        self.connections.record(statistics.connections.load(ordering: .relaxed))
        self.queueDepth.record(reporter.pipeline.queueDepth)
        self.databaseBytes.record(await reporter.store.sizeInBytes())
        self.writerHealthy.record(reporter.pipeline.failure == nil ? 1 : 0)
        let lastCommitMs = statistics.lastCommitMs.load(ordering: .relaxed)
        self.lastCommitAge.record(lastCommitMs > 0 ? Double(max(0, nowMs - lastCommitMs)) / 1000 : 0)
        self.uptime.record(max(0, nowMs - reporter.startedAtMs) / 1000)
        if case .success(let counts) = await reporter.meterStates(nowMs: nowMs) {
            self.meters["active"]?.record(counts.active)
            self.meters["inactive"]?.record(counts.inactive)
            self.meters["faulty"]?.record(counts.faulty)
        }
        if let regions = try? await reporter.queries.readSuccessToday(nowMs: nowMs), !regions.isEmpty {
            let installed = regions.reduce(0) { $0 + $1.installed }
            let reporting = regions.reduce(0) { $0 + $1.reporting }
            self.readSuccess.record(installed > 0 ? Double(reporting) / Double(installed) : 0)
            let factory = self.factory
            self.regionReadSuccess.withLock { gauges in
                for region in regions {
                    let gauge =
                        gauges[region.region]
                        ?? CoreMetrics.Gauge(label: "meterd_region_read_success_rate", dimensions: [("region", region.region)], factory: factory)
                    gauges[region.region] = gauge
                    gauge.record(region.rate ?? 0)
                }
            }
        }
        return self.registry.emitToString()
    }
}

/// A swift-metrics factory over a Prometheus registry that gives each metric its `# HELP`
/// line and its own histogram buckets (Prometheus' own factory leaves help text empty).
package struct PrometheusHelpFactory: MetricsFactory {
    package let registry: PrometheusCollectorRegistry
    private let help: [String: String]
    private let durationBuckets: [String: [Duration]]
    private let valueBuckets: [String: [Double]]
    private let base: PrometheusMetricsFactory

    package init(
        registry: PrometheusCollectorRegistry, help: [String: String],
        durationBuckets: [String: [Duration]] = [:], valueBuckets: [String: [Double]] = [:]
    ) {
        self.registry = registry
        self.help = help
        self.durationBuckets = durationBuckets
        self.valueBuckets = valueBuckets
        self.base = PrometheusMetricsFactory(registry: registry)
    }

    private func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: self.help[label] ?? "")
    }

    package func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        self.registry.makeCounter(descriptor: self.descriptor(label), labels: dimensions)
    }

    package func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        self.registry.makeCounter(descriptor: self.descriptor(label), labels: dimensions)
    }

    package func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        self.registry.makeGauge(descriptor: self.descriptor(label), labels: dimensions)
    }

    package func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return self.registry.makeGauge(descriptor: self.descriptor(label), labels: dimensions) }
        let buckets = self.valueBuckets[label] ?? self.base.defaultValueHistogramBuckets
        return self.registry.makeValueHistogram(descriptor: self.descriptor(label), labels: dimensions, buckets: buckets)
    }

    package func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        let buckets = self.durationBuckets[label] ?? self.base.defaultDurationHistogramBuckets
        return self.registry.makeDurationHistogram(descriptor: self.descriptor(label), labels: dimensions, buckets: buckets)
    }

    package func destroyCounter(_ handler: any CounterHandler) { self.base.destroyCounter(handler) }
    package func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { self.base.destroyFloatingPointCounter(handler) }
    package func destroyMeter(_ handler: any MeterHandler) { self.base.destroyMeter(handler) }
    package func destroyRecorder(_ handler: any RecorderHandler) { self.base.destroyRecorder(handler) }
    package func destroyTimer(_ handler: any TimerHandler) { self.base.destroyTimer(handler) }
}
