import Foundation
import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// The shared store (SPEC.md section 9): one PostgreSQL database, migrated by meterd itself
/// (``PostgreSQLSchema``), written by the ``IngestWriter`` through ``PostgreSQLIngestBackend``.
///
/// Reads share one connection (PostgresNIO queues queries on it); reads that must see one
/// consistent snapshot (the KPI stores) open a short-lived connection for a REPEATABLE READ
/// transaction, so no other query can slip into it.
package final class PostgreSQLMeterStore: MeterStore {
    package let connector: PostgreSQLConnector
    private let logger: Logger
    private let reader: PostgreSQLReader
    /// The last `pg_database_size` and when it was taken (``sizeInBytes()``).
    private let size = Mutex<(bytes: Int64, takenMs: Int64)?>(nil)
    /// How long a database size is answered again before it is asked for anew.
    static let sizeLifetimeMs: Int64 = 10_000
    /// This process's name in the commit feed: host, process id and a random part, so a restarted
    /// node never takes its earlier rows for its own.
    package let node: String = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(UInt32.random(in: 0...UInt32.max))"

    /// Connects, checks the server and migrates the schema: a bad URL, a refused connection or a
    /// wrong password throws ``PostgreSQLStoreError`` with one line naming the problem.
    package init(address: PostgreSQLAddress, logger: Logger, timeouts: PostgreSQLTimeouts = PostgreSQLTimeouts()) throws {
        self.connector = try PostgreSQLConnector(address: address, logger: logger, timeouts: timeouts)
        self.logger = logger
        let connection = try self.connector.connectBlocking(id: 0)
        defer { connection.closeInBackground() }
        let rows = try connection.runBlocking("SHOW server_version_num", logger: logger, address: address, doing: "checking the version")
        let version = Int(try rows.first?.decode(String.self) ?? "0") ?? 0
        guard version >= 150_000 else {
            throw PostgreSQLStoreError("PostgreSQL at \(address.server) is version \(version / 10_000); meterd needs 15 or later")
        }
        let applied = try PostgreSQLSchema.migrate(connection, nowMs: WallClock.nowMs(), address: address, logger: logger)
        if !applied.isEmpty {
            logger.info("PostgreSQL schema migrated", metadata: ["db.migrations": "\(applied.joined(separator: ","))"])
        }
        self.reader = PostgreSQLReader(connector: self.connector)
    }

    package var location: String { self.connector.address.description }

    /// At most ``sizeLifetimeMs`` old: `pg_database_size` stats every file of the database (each
    /// partition's, each index's), and status and `/metrics` may be polled many times a second.
    /// Polled every 20 ms under ingest (`Benchmarks/ingest.py`), it took a quarter of PostgreSQL's CPU.
    package func sizeInBytes() async -> Int64 {
        let now = WallClock.nowMs()
        if let cached = self.size.withLock({ $0 }), now - cached.takenMs < Self.sizeLifetimeMs { return cached.bytes }
        guard let bytes = try? await self.reader.query("SELECT pg_database_size(current_database())").first?.decode(Int64.self) else {
            return self.size.withLock { $0?.bytes } ?? 0
        }
        self.size.withLock { $0 = (bytes, now) }
        return bytes
    }

    package func makeWriter(_ settings: WriterSettings) throws -> any MeterStoreWriter {
        try IngestWriter(
            backend: PostgreSQLIngestBackend(connector: self.connector, node: self.node, logger: self.logger),
            calendar: MonthCalendar(timeZone: settings.timeZone),
            tariff: settings.tariff, unknownMeters: settings.unknownMeters, metering: settings.metering)
    }

    package func makeCommitFeed() -> (any CommitFeedSource)? {
        PostgreSQLCommitFeed(connector: self.connector, node: self.node)
    }

    package func makeSingletonLock() -> (any SingletonLock)? {
        PostgreSQLSingletonLock(connector: self.connector)
    }

    package func makeSessionStore() -> (any HTTPSessionStore)? {
        PostgreSQLSessionStore(reader: self.reader)
    }

    package func recordedTimeZone() async throws -> TimeZone? {
        try await self.reader.query("SELECT value FROM store_setting WHERE name = 'time_zone'").first
            .flatMap { TimeZone(identifier: try $0.decode(String.self)) }
    }

    package func loadConcentratorAssignments() throws -> [String: Set<String>] {
        let connection = try self.connector.connectBlocking(id: 4)
        defer { connection.closeInBackground() }
        var assignments: [String: Set<String>] = [:]
        for row in try connection.runBlocking(
            "SELECT concentrator, meter FROM concentrator_meter", logger: self.logger, address: self.connector.address,
            doing: "reading the concentrators")
        {
            let (concentrator, meter) = try row.decode((String, String).self)
            assignments[concentrator, default: []].insert(meter)
        }
        return assignments
    }

    package func concentratorAssignments() async throws -> [String: Set<String>] {
        var assignments: [String: Set<String>] = [:]
        for row in try await self.reader.query("SELECT concentrator, meter FROM concentrator_meter") {
            let (concentrator, meter) = try row.decode((String, String).self)
            assignments[concentrator, default: []].insert(meter)
        }
        return assignments
    }

    // MARK: KPIs

    package func loadMonthlyStore() async throws -> sending MonthlyStore {
        try await self.withSnapshot { connection in
            var store = MonthlyStore()
            // The snapshot first: REPEATABLE READ takes it at the first statement, and it decides which
            // deltas (other nodes' too) the store holds already.
            store.coveredSnapshot = try await self.snapshot(connection)
            store.coveredThrough =
                try await self.rows(connection, "SELECT reading_position FROM ingest_watermark WHERE id = 1").first?
                .decode(Int64.self) ?? 0
            store = try await self.fold(connection, "SELECT id, region, COALESCE(installed_month, 0) FROM customer ORDER BY id", into: store) {
                store, row in
                let (id, region, month) = try row.decode((Int64, String, Int64).self)
                store.addCustomer(id: id, region: region, installedMonth: Int32(clamping: month))
            }
            store = try await self.fold(connection, "SELECT id, name, customer_id, region FROM meter ORDER BY id", into: store) { store, row in
                let (id, name, customer, region) = try row.decode((Int64, String, Int64?, String).self)
                store.addMeter(id: id, name: name, customerID: customer, region: region)
            }
            // One row per meter with its months in arrays (aligned: one aggregation pass): 24×
            // fewer rows than one per meter-month, whose per-row decoding was most of this load.
            store = try await self.fold(
                connection,
                """
                SELECT meter_id, array_agg(month::bigint), array_agg(kwh), array_agg(revenue), array_agg(readings),
                       array_agg(faults), array_agg(good), array_agg(fair), array_agg(poor),
                       array_agg(COALESCE(imported_status, -1)::bigint), array_agg(estimated)
                FROM meter_month_all GROUP BY meter_id
                """,
                into: store
            ) { store, row in
                let (meter, months, kwh, revenue, readings, faults, good, fair, poor, imported, estimated) = try row.decode(
                    (Int64, [Int64], [Double], [Double], [Int64], [Int64], [Int64], [Int64], [Int64], [Int64], [Int64]).self)
                let count = months.count
                let lengths = [kwh, revenue].map(\.count) + [readings, faults, good, fair, poor, imported, estimated].map(\.count)
                guard lengths.allSatisfy({ $0 == count }) else {
                    throw PostgreSQLStoreError("meter_month_all gave meter \(meter) months of unequal lengths")
                }
                for index in 0..<count {
                    store.setMonth(
                        Int(months[index]), meterID: meter, kwh: kwh[index], revenue: revenue[index],
                        readings: Int32(clamping: readings[index]), faults: Int32(clamping: faults[index]),
                        good: Int32(clamping: good[index]), fair: Int32(clamping: fair[index]), poor: Int32(clamping: poor[index]),
                        importedStatus: Int8(clamping: imported[index]), estimated: Int32(clamping: estimated[index]))
                }
            }
            return store
        }
    }

    /// The customer's installation date as a day key, or the meter's first day of readings,
    /// whichever is earlier (`m` a meter, `c` its customer); as in ``SQLiteMeterStore``.
    private static let installedDay = """
        CASE WHEN c.installed_on IS NULL OR length(c.installed_on) < 10 THEN m.first_reading_day
             WHEN m.first_reading_day IS NULL THEN replace(substr(c.installed_on, 1, 10), '-', '')::integer
             ELSE LEAST(m.first_reading_day, replace(substr(c.installed_on, 1, 10), '-', '')::integer) END
        """

    package func loadReadDayStore(months: ClosedRange<Month>?) async throws -> sending ReadDayStore {
        try await self.withSnapshot { connection in
            var store = ReadDayStore(heldMonths: months == nil ? ReadDayStore.defaultHeldMonths : nil)
            // The snapshot first: REPEATABLE READ takes it at the first statement, and it decides which
            // deltas (other nodes' too) the store holds already.
            store.coveredSnapshot = try await self.snapshot(connection)
            store.coveredThrough =
                try await self.rows(connection, "SELECT reading_position FROM ingest_watermark WHERE id = 1").first?
                .decode(Int64.self) ?? 0
            if let received = try await self.rows(connection, "SELECT min(first_seen_ms), max(last_received_ms) FROM meter").first {
                let (first, last) = try received.decode((Int64?, Int64?).self)
                store.setReceived(firstMs: first, lastMs: last)
            }
            store = try await self.fold(
                connection,
                PostgresQuery(
                    unsafeSQL:
                        "SELECT m.id, m.name, m.customer_id, m.region, \(Self.installedDay) FROM meter m LEFT JOIN customer c ON c.id = m.customer_id ORDER BY m.id"
                ),
                into: store
            ) { store, row in
                let (id, name, customer, region, installed) = try row.decode((Int64, String, Int64?, String, Int64?).self)
                store.addMeter(id: id, name: name, customerID: customer, region: region, installedDay: installed.map(Int.init))
            }
            // `meter_day` folded by the server into what the store keeps (reporting meters per
            // region and day, sums per meter and held month): days × regions and meters × months
            // cross the wire, not every meter-day.
            store = try await self.fold(
                connection,
                """
                SELECT d.day, m.region, count(*) FROM meter_day_all d JOIN meter m ON m.id = d.meter_id WHERE d.readings > 0
                GROUP BY d.day, m.region
                """,
                into: store
            ) { store, row in
                let (day, region, meters) = try row.decode((Int64, String, Int64).self)
                store.addReporting(day: Int(day), region: region, meters: Int(meters))
            }
            let firstDay = Int64(months?.lowerBound.key ?? store.firstHeldMonth ?? 0) * 100
            let lastDay = Int64(months?.upperBound.key ?? Int(Int32.max / 100)) * 100 + 99
            store = try await self.fold(
                connection,
                """
                SELECT meter_id, day / 100, sum(readings)::bigint, sum(spacing_sum_ms)::bigint, sum(spacing_count)::bigint FROM meter_day_all
                WHERE day >= \(firstDay) AND day <= \(lastDay) GROUP BY meter_id, day / 100
                """,
                into: store
            ) { store, row in
                let (meter, month, readings, spacingSum, spacingCount) = try row.decode((Int64, Int64, Int64, Int64, Int64).self)
                store.addMonth(meterID: meter, month: Int(month), readings: Int(readings), spacingSumMs: spacingSum, spacingCount: Int(spacingCount))
            }
            return store
        }
    }

    package func companyEventTotals(through month: Month, region: String?) async throws -> [CompanyEventTotal] {
        try await self.reader.query(
            """
            SELECT kind, month, item, SUM(count)::bigint, SUM(total) FROM company_rollup
            WHERE month <= \(month.key) AND (\(region)::text IS NULL OR region = \(region)) GROUP BY kind, month, item
            """
        ).map { row in
            let (kind, month, item, count, total) = try row.decode((String, Int64, Int64, Int64, Double).self)
            return CompanyEventTotal(kind: kind, month: Int(month), item: Int(item), count: Int(count), total: total)
        }
    }

    package func latencyBuckets(from: Month, to: Month, region: String?) async throws -> [LatencyBucketTotal] {
        try await self.reader.query(
            """
            SELECT bucket, SUM(count)::bigint, SUM(sum_ms)::double precision FROM latency_month
            WHERE month >= \(from.key) AND month <= \(to.key) AND (\(region)::text IS NULL OR region = \(region))
            GROUP BY bucket ORDER BY bucket
            """
        ).map { row in
            let (bucket, count, sum) = try row.decode((Int64, Int64, Double).self)
            return LatencyBucketTotal(bucket: Int(bucket), count: Int(count), sumMs: sum)
        }
    }

    package func technicianNames() async throws -> [Int: String] {
        var names: [Int: String] = [:]
        for row in try await self.reader.query("SELECT id, name FROM technician") {
            let (id, name) = try row.decode((Int64, String).self)
            names[Int(id)] = name
        }
        return names
    }

    package func validationFlagCounts(from: Month, to: Month, region: String?) async throws -> [ValidationRule: Int] {
        var counts: [ValidationRule: Int] = [:]
        for row in try await self.reader.query(
            """
            SELECT f.rule, count(*) FROM validation_flag f JOIN meter m ON m.id = f.meter_id
            WHERE f.month >= \(from.key) AND f.month <= \(to.key) AND (\(region)::text IS NULL OR m.region = \(region))
            GROUP BY f.rule
            """)
        {
            let (rule, count) = try row.decode((String, Int64).self)
            if let rule = ValidationRule(rawValue: rule) { counts[rule] = Int(count) }
        }
        return counts
    }

    package func readDays(from: Day, through: Day, region: String?) async throws -> ReadDayFacts {
        let received = try await self.reader.query("SELECT min(first_seen_ms), max(last_received_ms) FROM meter").first?
            .decode((Int64?, Int64?).self)
        var meterQuery = PostgresQuery(
            unsafeSQL: """
                SELECT * FROM (SELECT m.id, m.name, m.customer_id, m.region, \(Self.installedDay) AS installed_day
                               FROM meter m LEFT JOIN customer c ON c.id = m.customer_id) AS meters
                WHERE installed_day <= $1 AND ($2::text IS NULL OR region = $2) ORDER BY id
                """)
        meterQuery.binds.append(Int64(through.key))
        meterQuery.binds.append(region)
        let meters = try await self.reader.query(meterQuery).map { row in
            let (id, name, customer, region, installed) = try row.decode((Int64, String, Int64?, String, Int64).self)
            return ReadDayFacts.InstalledMeter(id: id, name: name, customerID: customer, region: region, installedOn: Day(key: Int(installed)))
        }
        let days = try await self.reader.query(
            """
            SELECT d.day, d.meter_id, d.readings, d.spacing_sum_ms, d.spacing_count FROM meter_day_all d JOIN meter m ON m.id = d.meter_id
            WHERE d.day >= \(from.key) AND d.day <= \(through.key) AND (\(region)::text IS NULL OR m.region = \(region))
            """
        ).map { row in
            let (day, meter, readings, spacingSum, spacingCount) = try row.decode((Int64, Int64, Int64, Int64, Int64).self)
            return ReadDayFacts.MeterDay(
                meterID: meter, day: Day(key: Int(day)), readings: Int(readings), spacingSumMs: spacingSum, spacingCount: Int(spacingCount))
        }
        return ReadDayFacts(firstReceivedMs: received?.0, lastReceivedMs: received?.1, meters: meters, days: days)
    }

    // MARK: Meters

    package func inactiveMeterCount(region: String?) async throws -> Int {
        // ``MeterRules/isInactive(inactiveSinceMs:lastReceivedMs:)``: flagged, or never heard from.
        // Never heard from is `first_seen_ms IS NULL`, the predicate of `meter_never_reported`
        // (migration v4); a meter's first commit sets it with `last_received_ms`.
        let rows = try await self.reader.query(
            """
            SELECT (SELECT count(*) FROM meter WHERE inactive_since_ms IS NOT NULL AND (\(region)::text IS NULL OR region = \(region)))
                 + (SELECT count(*) FROM meter WHERE first_seen_ms IS NULL AND inactive_since_ms IS NULL
                                                 AND (\(region)::text IS NULL OR region = \(region)))
            """)
        return Int(try rows.first?.decode(Int64.self) ?? 0)
    }

    package func inactiveMeters(region: String?, limit: Int) async throws -> [InactiveMeter] {
        var meters = try await self.reader.query(
            """
            SELECT name, customer_id, region, inactive_since_ms, last_received_ms FROM meter
            WHERE inactive_since_ms IS NOT NULL AND (\(region)::text IS NULL OR region = \(region))
            ORDER BY inactive_since_ms, id LIMIT \(Int64(limit))
            """
        ).map { row in
            let (name, customer, region, since, last) = try row.decode((String, Int64?, String, Int64?, Int64?).self)
            return InactiveMeter(meter: name, customerID: customer, region: region, silentSinceMs: since, lastReceivedMs: last)
        }
        if meters.count < limit {
            meters += try await self.reader.query(
                """
                SELECT name, customer_id, region FROM meter
                WHERE first_seen_ms IS NULL AND inactive_since_ms IS NULL AND (\(region)::text IS NULL OR region = \(region))
                ORDER BY id LIMIT \(Int64(limit - meters.count))
                """
            ).map { row in
                let (name, customer, region) = try row.decode((String, Int64?, String).self)
                return InactiveMeter(meter: name, customerID: customer, region: region, silentSinceMs: nil, lastReceivedMs: nil)
            }
        }
        return meters
    }

    package func meterRecord(named name: String) async throws -> MeterRecord? {
        try await self.reader.query(
            """
            SELECT id, name, customer_id, region, hwm_seq, first_seen_ms, last_received_ms, last_ts_ms, last_status, last_fault,
                   inactive_since_ms, readings_total, faults_total, duplicates_total
            FROM meter WHERE name = \(name)
            """
        ).first.map { row in
            let (
                id, name, customer, region, hwm, firstSeen, lastReceived, lastTs, lastStatus, lastFault, inactiveSince, readings, faults, duplicates
            ) =
                try row.decode((Int64, String, Int64?, String, Int64, Int64?, Int64?, Int64?, Int64?, String?, Int64?, Int64, Int64, Int64).self)
            return MeterRecord(
                id: id, name: name, customerID: customer, region: region, highWaterMark: hwm, firstSeenMs: firstSeen, lastReceivedMs: lastReceived,
                lastTimestampMs: lastTs, lastStatus: lastStatus.flatMap { MeterHealth(rawValue: UInt8(truncatingIfNeeded: $0)) },
                lastFault: lastFault, inactiveSinceMs: inactiveSince, readingsTotal: readings, faultsTotal: faults, duplicatesTotal: duplicates)
        }
    }

    /// The views are a UNION ALL of joins, which PostgreSQL does not join into by index: a join
    /// to `meter` on the name scanned every meter-month (0.7–1.4 s at 100,000 meters × 24 months).
    /// A condition on `meter_id` itself goes down into both halves of the view (under 1 ms).
    package func meterMonths(named name: String) async throws -> [MeterMonthRecord] {
        try await self.reader.query(
            """
            SELECT mm.month, mm.kwh, mm.revenue, mm.readings, mm.faults, mm.good, mm.fair, mm.poor,
                   mm.latency_sum_ms, mm.latency_count, mm.latency_max_ms, mm.imported_status, mm.estimated, mm.estimated_kwh
            FROM meter_month_all mm WHERE mm.meter_id = (SELECT id FROM meter WHERE name = \(name)) ORDER BY mm.month
            """
        ).map { row in
            let (month, kwh, revenue, readings, faults, good, fair, poor, latencySum, latencyCount, latencyMax, imported, estimated, estimatedKwh) =
                try row.decode((Int64, Double, Double, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64?, Int64, Double).self)
            return MeterMonthRecord(
                month: Month(key: Int(month)), kwh: kwh, revenue: revenue, readings: readings, faults: faults, good: good, fair: fair, poor: poor,
                latencySumMs: latencySum, latencyCount: latencyCount, latencyMaxMs: latencyMax,
                importedStatus: imported.flatMap { MeterHealth(rawValue: UInt8(clamping: $0)) }, estimated: estimated, estimatedKwh: estimatedKwh)
        }
    }

    package func validationFlags(meter name: String, limit: Int) async throws -> [ValidationFlag] {
        try await self.reader.query(
            """
            SELECT f.rule, f.ts_ms, f.seq, f.detail FROM validation_flag f JOIN meter m ON m.id = f.meter_id
            WHERE m.name = \(name) ORDER BY f.ts_ms DESC, f.id DESC LIMIT \(Int64(limit))
            """
        ).compactMap { row in
            let (rule, ts, seq, detail) = try row.decode((String, Int64, Int64, String).self)
            return ValidationRule(rawValue: rule).map { ValidationFlag(rule: $0, timestampMs: ts, seq: seq, detail: detail) }
        }
    }

    /// A meter's newest readings by the order they were stored (`position`), from its primary key
    /// range: every reading of the meter is found, so the answer is always complete.
    package func recentReadings(meter name: String, limit: Int) async throws -> RecentReadings? {
        guard let id = try await self.reader.query("SELECT id FROM meter WHERE name = \(name)").first?.decode(Int64.self) else { return nil }
        let readings = try await self.reader.query(
            """
            SELECT seq, ts_ms, received_ms, kwh, status, fault, voltage, register_kwh FROM reading
            WHERE meter_id = \(id) ORDER BY position DESC LIMIT \(Int64(max(0, limit)))
            """
        ).map { row in
            let (seq, ts, received, kwh, status, fault, voltage, register) = try row.decode(
                (Int64, Int64, Int64, Double, Int64, String?, Double?, Double?).self)
            return StoredReading(
                seq: seq, timestampMs: ts, receivedMs: received, kwh: kwh, status: MeterHealth(rawValue: UInt8(clamping: status)) ?? .good,
                fault: fault, voltage: voltage, registerKwh: register)
        }
        return RecentReadings(readings: readings, complete: true, scannedRows: Int64(readings.count), scannedSinceMs: nil)
    }

    package func livenessCandidates(cutoffMs: Int64, startMs: Int64) async throws -> LivenessCandidates {
        let silent = try await self.reader.query(
            "SELECT id, name FROM meter WHERE inactive_since_ms IS NULL AND COALESCE(last_received_ms, \(startMs)) < \(cutoffMs)"
        ).map { row in
            let (id, name) = try row.decode((Int64, String).self)
            return StoredMeterName(id: id, name: name)
        }
        let flagged = try await self.reader.query("SELECT id, name, last_received_ms FROM meter WHERE inactive_since_ms IS NOT NULL").map { row in
            let (id, name, lastReceivedMs) = try row.decode((Int64, String, Int64?).self)
            return InactiveFlag(meter: StoredMeterName(id: id, name: name), lastReceivedMs: lastReceivedMs)
        }
        return LivenessCandidates(silent: silent, flagged: flagged)
    }

    // MARK: Customers

    package func customerHistory(id: Int64) async throws -> CustomerHistory? {
        guard let customer = try await self.reader.query("SELECT id, region, installed_on FROM customer WHERE id = \(id)").first else { return nil }
        let (customerID, region, installedOn) = try customer.decode((Int64, String, String?).self)
        var history = CustomerHistory(id: customerID, region: region, installedOn: installedOn)
        history.meters = try await self.reader.query(
            """
            SELECT name, inactive_since_ms, last_received_ms, readings_total, faults_total, last_status
            FROM meter WHERE customer_id = \(id) ORDER BY name
            """
        ).map { row in
            let (name, inactiveSince, lastReceived, readings, faults, lastStatus) = try row.decode(
                (String, Int64?, Int64?, Int64, Int64, Int64?).self)
            return CustomerHistory.Meter(
                name: name, inactive: MeterRules.isInactive(inactiveSinceMs: inactiveSince, lastReceivedMs: lastReceived),
                lastReceivedMs: lastReceived, lastStatus: lastStatus.flatMap { MeterHealth(rawValue: UInt8(truncatingIfNeeded: $0)) },
                readingsTotal: readings, faultsTotal: faults)
        }
        history.monthly = try await self.reader.query(
            """
            SELECT mm.month, SUM(mm.kwh), SUM(mm.revenue), SUM(mm.readings)::bigint, SUM(mm.faults)::bigint, SUM(mm.good)::bigint,
                   SUM(mm.fair)::bigint, SUM(mm.poor)::bigint, MAX(mm.imported_status), SUM(mm.estimated)::bigint
            FROM meter_month_all mm WHERE mm.meter_id = ANY(ARRAY(SELECT id FROM meter WHERE customer_id = \(id)))
            GROUP BY mm.month ORDER BY mm.month
            """
        ).map { row in
            let (month, kwh, revenue, readings, faults, good, fair, poor, imported, estimated) = try row.decode(
                (Int64, Double, Double, Int64, Int64, Int64, Int64, Int64, Int64?, Int64).self)
            let status = MeterRules.monthStatus(
                imported: imported.flatMap { MeterHealth(rawValue: UInt8(clamping: $0)) }, readings: readings, good: good, fair: fair, poor: poor)
            return CustomerHistory.MonthTotal(
                month: Month(key: Int(month)), kwh: kwh, revenue: revenue, readings: readings, faults: faults, status: status,
                estimated: estimated > 0)
        }
        history.bills = try await self.reader.query("SELECT month, amount, paid FROM bill WHERE customer_id = \(id) ORDER BY month").map { row in
            let (month, amount, paid) = try row.decode((Int64, Double, Bool).self)
            return CustomerHistory.Bill(month: Month(key: Int(month)), amount: amount, paid: paid)
        }
        history.maintenance = try await self.reader.query(
            """
            SELECT m.request_date, m.resolution_date, m.resolution_days, m.technician_id, t.name
            FROM maintenance m LEFT JOIN technician t ON t.id = m.technician_id
            WHERE m.customer_id = \(id) ORDER BY m.request_date, m.ordinal
            """
        ).map { row in
            let (request, resolution, days, technician, name) = try row.decode((String, String?, Double?, Int64, String?).self)
            return CustomerHistory.Maintenance(
                requestDate: request, resolutionDate: resolution, resolutionDays: days, technicianID: technician, technician: name)
        }
        history.feedback = try await self.reader.query(
            "SELECT feedback_date, score FROM feedback WHERE customer_id = \(id) ORDER BY feedback_date, ordinal"
        ).map { row in
            let (date, score) = try row.decode((String, Int64).self)
            return CustomerHistory.Feedback(date: date, score: score)
        }
        history.complaints = try await self.reader.query(
            "SELECT id, complaint_date, category, resolved_date FROM complaint WHERE customer_id = \(id) ORDER BY complaint_date, id"
        ).map { row in
            let (complaint, date, category, resolved) = try row.decode((Int64, String, String, String?).self)
            return CustomerHistory.Complaint(id: complaint, date: date, category: category, resolvedDate: resolved)
        }
        history.installations = try await self.reader.query(
            """
            SELECT i.request_date, i.installed_date, i.days, i.technician_id, t.name
            FROM installation i LEFT JOIN technician t ON t.id = i.technician_id
            WHERE i.customer_id = \(id) ORDER BY i.request_date, i.ordinal
            """
        ).map { row in
            let (request, installed, days, technician, name) = try row.decode((String, String, Double?, Int64?, String?).self)
            return CustomerHistory.Installation(
                requestDate: request, installedDate: installed, days: days, technicianID: technician, technician: name)
        }
        return history
    }

    package func customerSummaries(ids: [Int64]) async throws -> [Int64: CustomerSummary] {
        guard !ids.isEmpty else { return [:] }
        var summaries: [Int64: CustomerSummary] = [:]
        for row in try await self.reader.query("SELECT id, installed_on FROM customer WHERE id = ANY(\(ids))") {
            let (id, installed) = try row.decode((Int64, String?).self)
            summaries[id, default: CustomerSummary()].installedOn = installed
        }
        for row in try await self.reader.query(
            "SELECT customer_id, name, inactive_since_ms, last_received_ms FROM meter WHERE customer_id = ANY(\(ids)) ORDER BY name")
        {
            let (customer, name, inactiveSince, lastReceived) = try row.decode((Int64, String, Int64?, Int64?).self)
            summaries[customer, default: CustomerSummary()].meters.append(
                (name, MeterRules.isInactive(inactiveSinceMs: inactiveSince, lastReceivedMs: lastReceived)))
        }
        return summaries
    }

    // MARK: Alerts

    package func alerts(state: AlertState?, limit: Int) async throws -> (alerts: [Alert], firing: Int) {
        let firing = Int(try await self.reader.query("SELECT count(*) FROM alert WHERE resolved_ms IS NULL").first?.decode(Int64.self) ?? 0)
        func alerts(_ rows: [PostgresRow]) throws -> [Alert] {
            try rows.compactMap { row in
                let (rule, subject, fired, resolved, detail) = try row.decode((String, String, Int64, Int64?, String).self)
                // A rule this build does not know (a newer meterd wrote it) is left out rather than failing the list.
                guard let rule = AlertRule(rawValue: rule) else { return nil }
                return Alert(
                    rule: rule, subject: subject, state: resolved == nil ? .firing : .resolved, firedMs: fired, resolvedMs: resolved, detail: detail)
            }
        }
        var found: [Alert] = []
        if state != .resolved {
            found += try alerts(
                try await self.reader.query(
                    """
                    SELECT rule, subject, fired_ms, resolved_ms, detail FROM alert WHERE resolved_ms IS NULL ORDER BY fired_ms, id LIMIT \(Int64(limit))
                    """))
        }
        if state != .firing, found.count < limit {
            found += try alerts(
                try await self.reader.query(
                    """
                    SELECT rule, subject, fired_ms, resolved_ms, detail FROM alert WHERE resolved_ms IS NOT NULL
                    ORDER BY resolved_ms DESC, id LIMIT \(Int64(limit - found.count))
                    """))
        }
        return (found, firing)
    }

    // MARK: Operations

    /// A `pg_dump` archive of the database (``PostgreSQLDump``), restorable with `pg_restore`.
    package func backup(to path: String) async throws -> BackupReport {
        try BackupReport.checkNewFile(path)
        let started = ContinuousClock.now
        try await PostgreSQLDump(address: self.connector.address).write(to: path)
        return BackupReport.written(path, since: started)
    }

    // MARK: Plumbing

    /// The first column of each row of `sql`, as text: for tests and diagnostics that look under
    /// the boundary (cast the column `::text`).
    package func firstColumnText(_ sql: String) async throws -> [String] {
        try await self.reader.query(PostgresQuery(unsafeSQL: sql)).map { try $0.decode(String.self) }
    }

    /// Runs `body` in a REPEATABLE READ transaction on a connection of its own, closed afterwards.
    private func withSnapshot<T>(_ body: (PostgresConnection) async throws -> sending T) async throws -> sending T {
        let connection = try await self.connector.connect(id: 2)
        do {
            _ = try await self.rows(connection, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            let value = try await body(connection)
            _ = try await self.rows(connection, "COMMIT")
            try? await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw PostgreSQLStoreError.describing(error, doing: "reading a snapshot", address: self.connector.address)
        }
    }

    /// The transaction's snapshot (`pg_current_snapshot()`).
    private func snapshot(_ connection: PostgresConnection) async throws -> CommitSnapshot {
        let text = try await self.rows(connection, "SELECT pg_current_snapshot()::text").first?.decode(String.self) ?? ""
        guard let snapshot = CommitSnapshot(text) else { throw PostgreSQLStoreError("PostgreSQL returned a snapshot meterd cannot read: \(text)") }
        return snapshot
    }

    private func rows(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> [PostgresRow] {
        try await connection.allRows(query, logger: self.logger, timeout: self.connector.timeouts.reader)
    }

    /// A load's rows folded into `state` as they arrive: none are held (``PostgresConnection/fold(_:logger:timeout:into:_:)``).
    private func fold<State>(
        _ connection: PostgresConnection, _ query: PostgresQuery, into state: State,
        _ fold: @escaping (inout State, PostgresRow) throws -> Void
    ) async throws -> sending State {
        try await connection.fold(query, logger: self.logger, timeout: self.connector.timeouts.reader, into: state, fold)
    }
}

/// The readers' connections: each query has one to itself while it runs, and up to
/// ``maximumConnections`` are open (more readers wait for one). A query that times out, or whose task
/// is cancelled, closes its connection (its protocol state is unknown); on a shared connection that
/// failed every other query in flight on it, and a slow fleet-wide KPI query held the dashboard's
/// small ones behind it. Idle connections are kept for the next reader, and replaced once closed.
///
/// Not PostgresNIO's `PostgresClient` pool: its requests wait through failed connects until its
/// circuit breaker trips (15 s or more) and then fail without the reason, where a reader here fails
/// at once with it (`cannot connect to PostgreSQL at …: Connection refused`).
actor PostgreSQLReader {
    /// Enough for the dashboard, the KPI engine and the status socket at once; a node's share of
    /// the server's `max_connections` stays small.
    static let maximumConnections = 4

    private let connector: PostgreSQLConnector
    private var idle: [PostgresConnection] = []
    /// Connections lent to queries or being opened for one.
    private var lent = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(connector: PostgreSQLConnector) {
        self.connector = connector
    }

    deinit {
        for connection in self.idle { connection.closeInBackground() }
    }

    /// An open connection for one query, given back with ``giveBack(_:)``.
    private func lend() async throws -> PostgresConnection {
        while true {
            while let connection = self.idle.popLast() {
                if !connection.isClosed {
                    self.lent += 1
                    return connection
                }
            }
            if self.lent < Self.maximumConnections {
                self.lent += 1
                do {
                    return try await self.connector.connect(id: 3)
                } catch {
                    self.lent -= 1
                    self.wakeOne()
                    throw error
                }
            }
            await withCheckedContinuation { self.waiting.append($0) }
        }
    }

    /// - Parameter reusable: false after anything but an answer from the server (a timeout or a
    ///   cancelled task is closing the connection, and `isClosed` does not say so yet).
    private func giveBack(_ connection: PostgresConnection, reusable: Bool) {
        self.lent -= 1
        if reusable, !connection.isClosed {
            self.idle.append(connection)
        } else {
            connection.closeInBackground()
        }
        self.wakeOne()
    }

    private func wakeOne() {
        if !self.waiting.isEmpty { self.waiting.removeFirst().resume() }
    }

    /// Runs a query on a connection of its own and collects its rows.
    nonisolated func query(_ query: PostgresQuery) async throws -> [PostgresRow] {
        let connection = try await self.lend()
        do {
            let rows = try await connection.allRows(query, logger: self.connector.logger, timeout: self.connector.timeouts.reader)
            await self.giveBack(connection, reusable: true)
            return rows
        } catch {
            // The server's error (bad SQL, a constraint) leaves the connection as good as before.
            await self.giveBack(connection, reusable: (error as? PSQLError)?.serverInfo != nil)
            throw PostgreSQLStoreError.describing(error, doing: "reading", address: self.connector.address)
        }
    }
}

/// Dashboard sessions in the shared database (migration `v6-http-sessions`), keyed by the SHA-256
/// of their token, which PostgreSQL computes: the token itself is never stored.
struct PostgreSQLSessionStore: HTTPSessionStore {
    let reader: PostgreSQLReader

    func create(token: String, username: String, expiresMs: Int64, nowMs: Int64) async throws {
        // Expired sessions go when a new one comes, as in memory.
        _ = try await self.reader.query(
            """
            WITH expired AS (DELETE FROM http_session WHERE expires_ms <= \(nowMs))
            INSERT INTO http_session (token_sha256, username, expires_ms) VALUES (sha256(convert_to(\(token), 'UTF8')), \(username), \(expiresMs))
            """)
    }

    func username(token: String, nowMs: Int64) async throws -> String? {
        try await self.reader.query(
            "SELECT username FROM http_session WHERE token_sha256 = sha256(convert_to(\(token), 'UTF8')) AND expires_ms > \(nowMs)"
        ).first?.decode(String.self)
    }

    func end(token: String) async throws {
        _ = try await self.reader.query("DELETE FROM http_session WHERE token_sha256 = sha256(convert_to(\(token), 'UTF8'))")
    }
}
