import CSQLite
import Dispatch
import Foundation
import GRDB

/// The embedded store: one SQLite file in WAL mode (``MeterDatabase``), read by a pool of reader
/// connections while the single ``IngestWriter`` writes.
package final class SQLiteMeterStore: MeterStore {
    /// The file; tests and the writer reach SQLite through it, nothing else does.
    package let database: MeterDatabase

    /// Opens (creating and migrating if needed) the database file at `path`.
    package convenience init(
        path: String, durability: Durability = .full, integrityCheck: MeterDatabase.IntegrityCheckTiming = .beforeOpening
    ) throws {
        self.init(database: try MeterDatabase(path: path, durability: durability, integrityCheck: integrityCheck))
    }

    package init(database: MeterDatabase) {
        self.database = database
    }

    package var location: String { self.database.path }

    package func sizeInBytes() async -> Int64 { self.database.sizeInBytes() }

    package func makeWriter(_ settings: WriterSettings) throws -> any MeterStoreWriter {
        do {
            return try IngestWriter(
                database: self.database, calendar: MonthCalendar(timeZone: settings.timeZone), tariff: settings.tariff,
                unknownMeters: settings.unknownMeters, metering: settings.metering)
        } catch {
            // A corrupt file may fail the meter load before the check beside it says why.
            try self.database.awaitIntegrityCheck()
            throw error
        }
    }

    package func concentratorAssignments() async throws -> [String: Set<String>] {
        try await self.database.pool.read { db in try Self.concentratorAssignments(db) }
    }

    /// ``concentratorAssignments()`` before the daemon starts, when nothing else reads yet.
    package func loadConcentratorAssignments() throws -> [String: Set<String>] {
        try self.database.pool.read { db in try Self.concentratorAssignments(db) }
    }

    private static func concentratorAssignments(_ db: Database) throws -> [String: Set<String>] {
        var assignments: [String: Set<String>] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT concentrator, meter FROM concentrator_meter") {
            assignments[row["concentrator"] as String, default: []].insert(row["meter"])
        }
        return assignments
    }

    package func recordedTimeZone() async throws -> TimeZone? {
        try await self.database.pool.read { db in
            try String.fetchOne(db, sql: "SELECT value FROM store_setting WHERE name = 'time_zone'").flatMap(TimeZone.init(identifier:))
        }
    }

    // MARK: KPIs

    package func loadMonthlyStore() async throws -> sending MonthlyStore {
        let pool = self.database.pool
        // About a second of CPU at 100,000 meters × 24 months: off the cooperative threads, and
        // off the writer, which keeps committing while the snapshot is read.
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<MonthlyStore, any Error>) in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try pool.read { db in try Self.loadMonthlyStore(db) } })
            }
        }
    }

    /// One read transaction: the rows and the watermark they cover come from the same snapshot.
    private static func loadMonthlyStore(_ db: Database) throws -> MonthlyStore {
        let store = MonthlyStore()
        store.coveredThrough = try Int64.fetchOne(db, sql: "SELECT reading_rowid FROM ingest_watermark WHERE id = 1") ?? 0
        try forEachRow(db, "SELECT id, region, installed_month FROM customer ORDER BY id") { row in
            store.addCustomer(
                id: sqlite3_column_int64(row, 0), region: text(row, 1) ?? Region.unassigned,
                installedMonth: Int32(sqlite3_column_int64(row, 2)))
        }
        try forEachRow(db, "SELECT id, name, customer_id, region FROM meter ORDER BY id") { row in
            let customer = sqlite3_column_type(row, 2) == SQLITE_NULL ? nil : sqlite3_column_int64(row, 2)
            store.addMeter(
                id: sqlite3_column_int64(row, 0), name: text(row, 1) ?? "", customerID: customer,
                region: text(row, 3) ?? Region.unassigned)
        }
        try forEachRow(
            db,
            """
            SELECT month, meter_id, kwh, revenue, readings, faults, good, fair, poor, imported_status, estimated FROM meter_month
            """
        ) { row in
            store.setMonth(
                Int(sqlite3_column_int64(row, 0)), meterID: sqlite3_column_int64(row, 1),
                kwh: sqlite3_column_double(row, 2), revenue: sqlite3_column_double(row, 3),
                readings: Int32(sqlite3_column_int64(row, 4)), faults: Int32(sqlite3_column_int64(row, 5)),
                good: Int32(sqlite3_column_int64(row, 6)), fair: Int32(sqlite3_column_int64(row, 7)), poor: Int32(sqlite3_column_int64(row, 8)),
                importedStatus: sqlite3_column_type(row, 9) == SQLITE_NULL ? -1 : Int8(sqlite3_column_int64(row, 9)),
                estimated: Int32(clamping: sqlite3_column_int64(row, 10)))
        }
        return store
    }

    package func companyEventTotals(through month: Month, region: String?) async throws -> [CompanyEventTotal] {
        try await self.database.pool.read { db in
            var arguments: StatementArguments = [month.key]
            if let region { arguments += [region] }
            return try Row.fetchAll(
                db,
                sql: """
                    SELECT kind, month, item, SUM(count) AS count, SUM(total) AS total FROM company_rollup
                    WHERE month <= ?\(region == nil ? "" : " AND region = ?") GROUP BY kind, month, item
                    """, arguments: arguments
            ).map { row in
                CompanyEventTotal(kind: row["kind"], month: row["month"], item: row["item"], count: row["count"], total: row["total"])
            }
        }
    }

    package func latencyBuckets(from: Month, to: Month, region: String?) async throws -> [LatencyBucketTotal] {
        try await self.database.pool.read { db in
            var arguments: StatementArguments = [from.key, to.key]
            if let region { arguments += [region] }
            return try Row.fetchAll(
                db,
                sql: """
                    SELECT bucket, SUM(count) AS count, TOTAL(sum_ms) AS sum_ms FROM latency_month
                    WHERE month >= ? AND month <= ?\(region == nil ? "" : " AND region = ?") GROUP BY bucket ORDER BY bucket
                    """, arguments: arguments
            ).map { row in
                LatencyBucketTotal(bucket: row["bucket"], count: row["count"], sumMs: row["sum_ms"])
            }
        }
    }

    package func validationFlagCounts(from: Month, to: Month, region: String?) async throws -> [ValidationRule: Int] {
        try await self.database.pool.read { db in
            var arguments: StatementArguments = [from.key, to.key]
            if let region { arguments += [region] }
            var counts: [ValidationRule: Int] = [:]
            for row in try Row.fetchAll(
                db,
                sql: """
                    SELECT f.rule, count(*) AS flags FROM validation_flag f
                    \(region == nil ? "" : "JOIN meter m ON m.id = f.meter_id ")WHERE f.month >= ? AND f.month <= ?\(region == nil ? "" : " AND m.region = ?")
                    GROUP BY f.rule
                    """, arguments: arguments)
            {
                if let rule = ValidationRule(rawValue: row["rule"]) { counts[rule] = row["flags"] }
            }
            return counts
        }
    }

    package func validationFlags(meter name: String, limit: Int) async throws -> [ValidationFlag] {
        try await self.database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT f.rule, f.ts_ms, f.seq, f.detail FROM validation_flag f JOIN meter m ON m.id = f.meter_id
                    WHERE m.name = ? ORDER BY f.ts_ms DESC, f.id DESC LIMIT ?
                    """, arguments: [name, limit]
            ).compactMap { row in
                ValidationRule(rawValue: row["rule"]).map { rule in
                    ValidationFlag(rule: rule, timestampMs: row["ts_ms"], seq: row["seq"], detail: row["detail"])
                }
            }
        }
    }

    /// The customer's installation date as a day key (its text's first ten characters), or the
    /// meter's first day of readings, whichever is earlier (`m` a meter, `c` its customer).
    private static let installedDay = """
        CASE WHEN c.installed_on IS NULL OR length(c.installed_on) < 10 THEN m.first_reading_day
             WHEN m.first_reading_day IS NULL THEN CAST(replace(substr(c.installed_on, 1, 10), '-', '') AS INTEGER)
             ELSE min(m.first_reading_day, CAST(replace(substr(c.installed_on, 1, 10), '-', '') AS INTEGER)) END
        """

    package func loadReadDayStore(months: ClosedRange<Month>?) async throws -> sending ReadDayStore {
        let pool = self.database.pool
        // Seconds of CPU at 100,000 meters × a year of days: off the cooperative threads, and off
        // the writer, which keeps committing while the snapshot is read.
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ReadDayStore, any Error>) in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try pool.read { db in try Self.loadReadDayStore(db, months: months) } })
            }
        }
    }

    /// One read transaction: the rows and the watermark they cover come from the same snapshot.
    private static func loadReadDayStore(_ db: Database, months: ClosedRange<Month>?) throws -> ReadDayStore {
        let store = ReadDayStore(heldMonths: months == nil ? ReadDayStore.defaultHeldMonths : nil)
        store.coveredThrough = try Int64.fetchOne(db, sql: "SELECT reading_rowid FROM ingest_watermark WHERE id = 1") ?? 0
        let received = try Row.fetchOne(db, sql: "SELECT min(first_seen_ms), max(last_received_ms) FROM meter")
        store.setReceived(firstMs: received?[0], lastMs: received?[1])
        try forEachRow(
            db,
            "SELECT m.id, m.name, m.customer_id, m.region, \(Self.installedDay) FROM meter m LEFT JOIN customer c ON c.id = m.customer_id ORDER BY m.id"
        ) { row in
            store.addMeter(
                id: sqlite3_column_int64(row, 0), name: text(row, 1) ?? "",
                customerID: sqlite3_column_type(row, 2) == SQLITE_NULL ? nil : sqlite3_column_int64(row, 2),
                region: text(row, 3) ?? Region.unassigned,
                installedDay: sqlite3_column_type(row, 4) == SQLITE_NULL ? nil : Int(sqlite3_column_int64(row, 4)))
        }
        // The writer's per-region-day counts and per-meter-month sums of `meter_day`
        // (`v11-read-success-rollups`): days × regions and meters × held months, however many
        // meter-days the history holds.
        try forEachRow(db, "SELECT day, region, reporting FROM region_day") { row in
            store.addReporting(
                day: Int(sqlite3_column_int64(row, 0)), region: text(row, 1) ?? Region.unassigned, meters: Int(sqlite3_column_int64(row, 2)))
        }
        let firstMonth = months?.lowerBound.key ?? store.firstHeldMonth ?? 0
        let lastMonth = months?.upperBound.key ?? Int(Int32.max)
        try forEachRow(
            db,
            """
            SELECT meter_id, month, readings, spacing_sum_ms, spacing_count FROM meter_month
            WHERE month >= \(firstMonth) AND month <= \(lastMonth) AND readings > 0
            """
        ) { row in
            store.addMonth(
                meterID: sqlite3_column_int64(row, 0), month: Int(sqlite3_column_int64(row, 1)), readings: Int(sqlite3_column_int64(row, 2)),
                spacingSumMs: sqlite3_column_int64(row, 3), spacingCount: Int(sqlite3_column_int64(row, 4)))
        }
        return store
    }

    package func readDays(from: Day, through: Day, region: String?) async throws -> ReadDayFacts {
        try await self.database.pool.read { db in
            let received = try Row.fetchOne(db, sql: "SELECT min(first_seen_ms), max(last_received_ms) FROM meter")
            let installed = Self.installedDay
            var meterArguments: StatementArguments = [through.key]
            if let region { meterArguments += [region] }
            let meters = try Row.fetchAll(
                db,
                sql: """
                    SELECT m.id, m.name, m.customer_id, m.region, \(installed) AS installed_day
                    FROM meter m LEFT JOIN customer c ON c.id = m.customer_id
                    WHERE installed_day <= ?\(region == nil ? "" : " AND m.region = ?") ORDER BY m.id
                    """, arguments: meterArguments
            ).map { row in
                ReadDayFacts.InstalledMeter(
                    id: row["id"], name: row["name"], customerID: row["customer_id"], region: row["region"],
                    installedOn: Day(key: row["installed_day"]))
            }
            var dayArguments: StatementArguments = [from.key, through.key]
            if let region { dayArguments += [region] }
            let days = try Row.fetchAll(
                db,
                sql: """
                    SELECT d.day, d.meter_id, d.readings, d.spacing_sum_ms, d.spacing_count FROM meter_day d
                    \(region == nil ? "" : "JOIN meter m ON m.id = d.meter_id ")WHERE d.day >= ? AND d.day <= ?\(region == nil ? "" : " AND m.region = ?")
                    """, arguments: dayArguments
            ).map { row in
                ReadDayFacts.MeterDay(
                    meterID: row["meter_id"], day: Day(key: row["day"]), readings: row["readings"],
                    spacingSumMs: row["spacing_sum_ms"], spacingCount: row["spacing_count"])
            }
            return ReadDayFacts(firstReceivedMs: received?[0], lastReceivedMs: received?[1], meters: meters, days: days)
        }
    }

    package func technicianNames() async throws -> [Int: String] {
        try await self.database.pool.read { db in
            var names: [Int: String] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT id, name FROM technician") { names[row["id"]] = row["name"] }
            return names
        }
    }

    // MARK: Meters

    /// ``MeterRules/isInactive(inactiveSinceMs:lastReceivedMs:)`` in SQL, answered from the two
    /// partial indexes (flagged meters, never-reported meters) rather than a scan.
    private static let flaggedInactive = "inactive_since_ms IS NOT NULL"
    private static let neverReported = "last_received_ms IS NULL AND inactive_since_ms IS NULL"

    package func inactiveMeterCount(region: String?) async throws -> Int {
        try await self.database.pool.read { db in
            let filter = region == nil ? "" : " AND region = ?"
            let arguments: StatementArguments = region.map { [$0] } ?? []
            // Both are counted in partial indexes (meter_inactive; meter_never_reported, or
            // meter_never_reported_by_region with a region): migration v6.
            let flagged = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM meter WHERE \(Self.flaggedInactive)" + filter, arguments: arguments) ?? 0
            let silent = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM meter WHERE \(Self.neverReported)" + filter, arguments: arguments) ?? 0
            return flagged + silent
        }
    }

    package func inactiveMeters(region: String?, limit: Int) async throws -> [InactiveMeter] {
        try await self.database.pool.read { db in
            let filter = region == nil ? "" : " AND region = ?"
            let regionArgument: StatementArguments = region.map { [$0] } ?? []
            // Ties go by meter row id, the order of the partial indexes, so no sort of every inactive meter is needed.
            var meters = try Row.fetchAll(
                db,
                sql: """
                    SELECT name, customer_id, region, inactive_since_ms, last_received_ms FROM meter
                    WHERE \(Self.flaggedInactive)\(filter) ORDER BY inactive_since_ms, id LIMIT ?
                    """, arguments: regionArgument + [limit]
            ).map { row in
                InactiveMeter(
                    meter: row["name"], customerID: row["customer_id"], region: row["region"],
                    silentSinceMs: row["inactive_since_ms"], lastReceivedMs: row["last_received_ms"])
            }
            if meters.count < limit {
                meters += try Row.fetchAll(
                    db,
                    sql: """
                        SELECT name, customer_id, region FROM meter WHERE \(Self.neverReported)\(filter) ORDER BY id LIMIT ?
                        """, arguments: regionArgument + [limit - meters.count]
                ).map { row in
                    InactiveMeter(
                        meter: row["name"], customerID: row["customer_id"], region: row["region"], silentSinceMs: nil,
                        lastReceivedMs: nil)
                }
            }
            return meters
        }
    }

    package func meterRecord(named name: String) async throws -> MeterRecord? {
        try await self.database.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM meter WHERE name = ?", arguments: [name]).map { row in
                let lastStatus: Int64? = row["last_status"]
                return MeterRecord(
                    id: row["id"], name: row["name"], customerID: row["customer_id"], region: row["region"], highWaterMark: row["hwm_seq"],
                    firstSeenMs: row["first_seen_ms"], lastReceivedMs: row["last_received_ms"], lastTimestampMs: row["last_ts_ms"],
                    lastStatus: lastStatus.flatMap { MeterHealth(rawValue: UInt8(truncatingIfNeeded: $0)) }, lastFault: row["last_fault"],
                    inactiveSinceMs: row["inactive_since_ms"], readingsTotal: row["readings_total"], faultsTotal: row["faults_total"],
                    duplicatesTotal: row["duplicates_total"])
            }
        }
    }

    /// A latency sum written before readings' latency was capped (stop 35) may have overflowed
    /// into a REAL that no `Int64` holds, and GRDB traps on decoding it; SQLite's CAST clamps to
    /// the `Int64` range instead, so such a meter-month reads as the largest latency there is.
    private static func clampedInteger(_ expression: String) -> String {
        "CAST(\(expression) AS INTEGER)"
    }

    package func meterMonths(named name: String) async throws -> [MeterMonthRecord] {
        try await self.database.pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT mm.month, mm.kwh, mm.revenue, mm.readings, mm.faults, mm.good, mm.fair, mm.poor,
                           \(Self.clampedInteger("mm.latency_sum_ms")) AS latency_sum_ms, mm.latency_count,
                           \(Self.clampedInteger("mm.latency_max_ms")) AS latency_max_ms, mm.imported_status, mm.estimated, mm.estimated_kwh
                    FROM meter_month mm JOIN meter m ON m.id = mm.meter_id WHERE m.name = ? ORDER BY mm.month
                    """, arguments: [name]
            ).map { row in
                let imported: Int64? = row["imported_status"]
                return MeterMonthRecord(
                    month: Month(key: row["month"]), kwh: row["kwh"], revenue: row["revenue"], readings: row["readings"], faults: row["faults"],
                    good: row["good"], fair: row["fair"], poor: row["poor"], latencySumMs: row["latency_sum_ms"],
                    latencyCount: row["latency_count"], latencyMaxMs: row["latency_max_ms"],
                    importedStatus: imported.flatMap { MeterHealth(rawValue: UInt8(clamping: $0)) }, estimated: row["estimated"],
                    estimatedKwh: row["estimated_kwh"])
            }
        }
    }

    package func livenessCandidates(cutoffMs: Int64, startMs: Int64) async throws -> LivenessCandidates {
        try await self.database.pool.read { db in
            let silent = try Row.fetchAll(
                db,
                sql: """
                    SELECT id, name FROM meter WHERE inactive_since_ms IS NULL AND COALESCE(last_received_ms, ?) < ?
                    """, arguments: [startMs, cutoffMs]
            ).map { StoredMeterName(id: $0["id"], name: $0["name"]) }
            let flagged = try Row.fetchAll(db, sql: "SELECT id, name, last_received_ms FROM meter WHERE \(Self.flaggedInactive)")
                .map { InactiveFlag(meter: StoredMeterName(id: $0["id"], name: $0["name"]), lastReceivedMs: $0["last_received_ms"]) }
            return LivenessCandidates(silent: silent, flagged: flagged)
        }
    }

    // MARK: Customers

    package func customerHistory(id: Int64) async throws -> CustomerHistory? {
        try await self.database.pool.read { db -> CustomerHistory? in
            guard let customer = try Row.fetchOne(db, sql: "SELECT id, region, installed_on FROM customer WHERE id = ?", arguments: [id]) else {
                return nil
            }
            var history = CustomerHistory(id: customer["id"], region: customer["region"], installedOn: customer["installed_on"])
            history.meters = try Row.fetchAll(
                db,
                sql: """
                    SELECT name, inactive_since_ms, last_received_ms, readings_total, faults_total, last_status
                    FROM meter WHERE customer_id = ? ORDER BY name
                    """, arguments: [id]
            ).map { row in
                let lastStatus: Int64? = row["last_status"]
                return CustomerHistory.Meter(
                    name: row["name"],
                    inactive: MeterRules.isInactive(inactiveSinceMs: row["inactive_since_ms"], lastReceivedMs: row["last_received_ms"]),
                    lastReceivedMs: row["last_received_ms"], lastStatus: lastStatus.flatMap { MeterHealth(rawValue: UInt8(truncatingIfNeeded: $0)) },
                    readingsTotal: row["readings_total"], faultsTotal: row["faults_total"])
            }
            history.monthly = try Row.fetchAll(
                db,
                sql: """
                    SELECT mm.month, SUM(mm.kwh) AS kwh, SUM(mm.revenue) AS revenue, SUM(mm.readings) AS readings,
                           SUM(mm.faults) AS faults, SUM(mm.good) AS good, SUM(mm.fair) AS fair, SUM(mm.poor) AS poor,
                           MAX(mm.imported_status) AS imported_status, SUM(mm.estimated) AS estimated
                    FROM meter_month mm JOIN meter m ON m.id = mm.meter_id
                    WHERE m.customer_id = ? GROUP BY mm.month ORDER BY mm.month
                    """, arguments: [id]
            ).map { row in
                let imported: Int64? = row["imported_status"]
                let status = MeterRules.monthStatus(
                    imported: imported.flatMap { MeterHealth(rawValue: UInt8(clamping: $0)) },
                    readings: row["readings"], good: row["good"], fair: row["fair"], poor: row["poor"])
                return CustomerHistory.MonthTotal(
                    month: Month(key: row["month"]), kwh: row["kwh"], revenue: row["revenue"],
                    readings: row["readings"], faults: row["faults"], status: status, estimated: (row["estimated"] as Int64) > 0)
            }
            history.bills = try Row.fetchAll(
                db, sql: "SELECT month, amount, paid FROM bill WHERE customer_id = ? ORDER BY month",
                arguments: [id]
            ).map { row in
                CustomerHistory.Bill(month: Month(key: row["month"]), amount: row["amount"], paid: (row["paid"] as Int64) != 0)
            }
            history.maintenance = try Row.fetchAll(
                db,
                sql: """
                    SELECT m.request_date, m.resolution_date, m.resolution_days, m.technician_id, t.name
                    FROM maintenance m LEFT JOIN technician t ON t.id = m.technician_id
                    WHERE m.customer_id = ? ORDER BY m.request_date, m.ordinal
                    """, arguments: [id]
            ).map { row in
                CustomerHistory.Maintenance(
                    requestDate: row["request_date"], resolutionDate: row["resolution_date"],
                    resolutionDays: row["resolution_days"], technicianID: row["technician_id"], technician: row["name"])
            }
            history.feedback = try Row.fetchAll(
                db,
                sql: """
                    SELECT feedback_date, score FROM feedback WHERE customer_id = ? ORDER BY feedback_date, ordinal
                    """, arguments: [id]
            ).map { row in
                CustomerHistory.Feedback(date: row["feedback_date"], score: row["score"])
            }
            history.complaints = try Row.fetchAll(
                db,
                sql: """
                    SELECT id, complaint_date, category, resolved_date FROM complaint WHERE customer_id = ? ORDER BY complaint_date, id
                    """, arguments: [id]
            ).map { row in
                CustomerHistory.Complaint(id: row["id"], date: row["complaint_date"], category: row["category"], resolvedDate: row["resolved_date"])
            }
            history.installations = try Row.fetchAll(
                db,
                sql: """
                    SELECT i.request_date, i.installed_date, i.days, i.technician_id, t.name
                    FROM installation i LEFT JOIN technician t ON t.id = i.technician_id
                    WHERE i.customer_id = ? ORDER BY i.request_date, i.ordinal
                    """, arguments: [id]
            ).map { row in
                CustomerHistory.Installation(
                    requestDate: row["request_date"], installedDate: row["installed_date"], days: row["days"],
                    technicianID: row["technician_id"], technician: row["name"])
            }
            return history
        }
    }

    package func customerSummaries(ids: [Int64]) async throws -> [Int64: CustomerSummary] {
        guard !ids.isEmpty else { return [:] }
        return try await self.database.pool.read { db in
            var summaries: [Int64: CustomerSummary] = [:]
            let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
            let arguments = StatementArguments(ids)
            for row in try Row.fetchAll(db, sql: "SELECT id, installed_on FROM customer WHERE id IN (\(marks))", arguments: arguments) {
                summaries[row["id"], default: CustomerSummary()].installedOn = row["installed_on"]
            }
            for row in try Row.fetchAll(
                db,
                sql: """
                    SELECT customer_id, name, inactive_since_ms, last_received_ms FROM meter WHERE customer_id IN (\(marks)) ORDER BY name
                    """, arguments: arguments)
            {
                let inactive = MeterRules.isInactive(inactiveSinceMs: row["inactive_since_ms"], lastReceivedMs: row["last_received_ms"])
                summaries[row["customer_id"], default: CustomerSummary()].meters.append((row["name"], inactive))
            }
            return summaries
        }
    }

    // MARK: Operations

    /// Writes a snapshot of the database to a new file with `VACUUM INTO`, from a reader
    /// connection: WAL readers see one consistent state and never block the writer.
    package func backup(to path: String) async throws -> BackupReport {
        try BackupReport.checkNewFile(path)
        let started = ContinuousClock.now
        do {
            // VACUUM refuses to run inside a transaction; alone it still reads one consistent snapshot.
            try await self.database.pool.unsafeRead { db in
                try db.execute(sql: "VACUUM INTO ?", arguments: [path])
            }
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            throw OperatorQueryError("backup_failed", "cannot write the backup to \(path): \(error)")
        }
        return BackupReport.written(path, since: started)
    }
}

private func text(_ row: OpaquePointer, _ column: Int32) -> String? {
    guard let pointer = sqlite3_column_text(row, column) else { return nil }
    return String(cString: pointer)
}

/// Steps a query through the C API: ~0.2 µs a row, where GRDB's `Row` costs several.
private func forEachRow(_ db: Database, _ sql: String, _ body: (OpaquePointer) throws -> Void) throws {
    let statement = try db.makeStatement(sql: sql)
    let handle = statement.sqliteStatement
    defer { sqlite3_reset(handle) }
    while true {
        let code = sqlite3_step(handle)
        if code == SQLITE_DONE { return }
        guard code == SQLITE_ROW else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
        }
        try body(handle)
    }
}
