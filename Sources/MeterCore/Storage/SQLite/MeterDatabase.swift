// glibc's struct stat may be attributed to Dispatch's C module, depending on module build order;
// importing it keeps MemberImportVisibility satisfied either way (as in JournalLogHandler.swift).
#if canImport(CDispatch)
import CDispatch
#endif
import Foundation
import GRDB
import NIOCore
import NIOPosix

/// How hard a commit pushes data to stable storage before meters are acknowledged.
package enum Durability: String, Sendable, CaseIterable {
    /// `synchronous=FULL`: an acknowledged reading survives power loss. The default.
    case full
    /// `synchronous=NORMAL`: survives a crash of meterd, may lose the last commits on power loss.
    case normal
}

/// Errors opening the database, phrased for an operator.
package enum DatabaseOpenError: Error, CustomStringConvertible {
    case corrupt(path: String, detail: String)
    case cannotOpen(path: String, underlying: any Error)
    /// Migrations this meterd does not know: a newer one wrote the file.
    case newerSchema(path: String, migrations: [String])

    package var description: String {
        switch self {
        case .corrupt(let path, let detail):
            "The database at \(path) is corrupt (\(detail)); restore it from a backup (meterctl backup) or move it aside."
        case .cannotOpen(let path, let underlying):
            "Cannot open the database at \(path): \(underlying)"
        case .newerSchema(let path, let migrations):
            "The database at \(path) was migrated by a newer meterd (\(migrations.joined(separator: ", ")) unknown to this one); "
                + "run that version or a newer one: this one would read and write it wrongly."
        }
    }
}

/// The SQLite file of one meterd node: opened once per process, migrated on open.
///
/// One `DatabasePool` in WAL mode: a single writer connection (the ingest pipeline) while the
/// status socket and dashboard read concurrently.
package final class MeterDatabase: Sendable {
    package let pool: DatabasePool
    package let path: String

    /// When the integrity check (`PRAGMA quick_check`) runs.
    package enum IntegrityCheckTiming: Sendable {
        /// Before ``init(path:durability:integrityCheck:)`` returns.
        case beforeOpening
        /// On a reader connection alongside whatever the caller does next (the daemon's meter
        /// load), finished by ``awaitIntegrityCheck()``: the writer, made before anything else
        /// writes, calls it before its first write. A database with a migration pending is always
        /// checked before it is migrated.
        case alongsideStartUp
    }

    /// The integrity check's verdict (succeeded at once unless it runs ``IntegrityCheckTiming/alongsideStartUp``).
    private let integrity: EventLoopFuture<Void>
    /// The migrations this open applied, in order; empty when the schema was current.
    package let migrationsApplied: [String]

    /// Opens (creating if needed) and migrates the database.
    package init(path: String, durability: Durability = .full, integrityCheck timing: IntegrityCheckTiming = .beforeOpening) throws {
        self.path = path
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        configuration.label = "meterd"
        let pool: DatabasePool
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
        } catch {
            throw DatabaseOpenError.cannotOpen(path: path, underlying: error)
        }
        self.pool = pool
        let synchronous = durability == .full ? "FULL" : "NORMAL"
        // The integrity check reads the whole file (about 9 s per GB here): under systemd, a large
        // database must not look like a hung start-up (the unit allows 120 s).
        let gigabytes = Int(Self.sizeInBytes(path: path) >> 30)
        if gigabytes > 0 { Self.extendStartTimeout(seconds: 120 + 30 * gigabytes, doing: "checking the database (\(gigabytes) GB)") }
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
            // Checkpoints run in the writer's commit: fewer, larger ones keep ack latency steady.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 4000")
        }
        let migrated: Bool
        do {
            migrated = try pool.read { db in try Self.migrator.hasCompletedMigrations(db) }
        } catch {
            // A damaged file may fail this first read: the check says why in the operator's terms.
            try Self.quickCheck(pool, path: path)
            throw error
        }
        // A downgrade: the older code would miss what the newer schema keeps (a probe saw marks
        // and day counts go wrong for good), so it refuses before anything reads or writes.
        let unknown = try pool.read { db -> [String] in
            guard try db.tableExists("grdb_migrations") else { return [] }
            let known = Set(Self.migrator.migrations)
            return try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier").filter { !known.contains($0) }
        }
        guard unknown.isEmpty else { throw DatabaseOpenError.newerSchema(path: path, migrations: unknown) }
        if timing == .alongsideStartUp && migrated {
            // Half of a large database's start-up: on the other core while the writer loads its meters.
            self.integrity = NIOThreadPool.singleton.runIfActive(eventLoop: MultiThreadedEventLoopGroup.singleton.any()) {
                try Self.quickCheck(pool, path: path)
            }
        } else {
            try Self.quickCheck(pool, path: path)
            self.integrity = MultiThreadedEventLoopGroup.singleton.any().makeSucceededVoidFuture()
        }
        if migrated {
            self.migrationsApplied = []
        } else {
            // A migration may rewrite a table row by row (v11 reads every `meter_day` row: minutes
            // at 100,000 meters × a year); it commits whole or not at all, so a kill would only repeat it.
            Self.extendStartTimeout(seconds: 1800, doing: "migrating the database schema")
            let before = try pool.read { db in try Self.migrator.appliedIdentifiers(db) }
            try Self.migrator.migrate(pool)
            self.migrationsApplied = Self.migrator.migrations.filter { !before.contains($0) }
        }
    }

    /// Waits for the integrity check of ``IntegrityCheckTiming/alongsideStartUp`` (at once when it
    /// is done) and throws ``DatabaseOpenError/corrupt(path:detail:)`` if it failed.
    package func awaitIntegrityCheck() throws {
        try self.integrity.wait()
    }

    private static func quickCheck(_ pool: DatabasePool, path: String) throws {
        let check: [String]
        do {
            check = try pool.read { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
        } catch let error as DatabaseError where [.SQLITE_CORRUPT, .SQLITE_NOTADB].contains(error.resultCode) {
            // Damage the check cannot walk past (a page that is no B-tree page) fails the check itself.
            throw DatabaseOpenError.corrupt(path: path, detail: error.message ?? "\(error.resultCode)")
        }
        guard check == ["ok"] else {
            // One line for the operator: SQLite's report spans many.
            let detail = check.joined(separator: "; ").split(whereSeparator: \.isNewline).joined(separator: "; ")
            throw DatabaseOpenError.corrupt(path: path, detail: detail.count > 200 ? String(detail.prefix(200)) + "…" : detail)
        }
    }

    /// Tells systemd that start-up goes on for up to `seconds` more (`EXTEND_TIMEOUT_USEC`), and why; nothing outside systemd.
    private static func extendStartTimeout(seconds: Int, doing work: String) {
        Systemd.notify("EXTEND_TIMEOUT_USEC=\(seconds * 1_000_000)\nSTATUS=Starting: \(work)…")
    }

    /// The `synchronous` pragma the writer connection runs with (1 = NORMAL, 2 = FULL).
    package func synchronousLevel() throws -> Int {
        try self.pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// Size of the database and its WAL in bytes.
    package func sizeInBytes() -> Int64 {
        Self.sizeInBytes(path: self.path)
    }

    /// The file's and its WAL's sizes, by `stat`: the status socket asks at every answer, and
    /// Foundation's `attributesOfItem` also reads the owner's user and group names (two files opened).
    private static func sizeInBytes(path: String) -> Int64 {
        [path, path + "-wal"].reduce(0) { total, file in
            var info = stat()
            return total + (stat(file, &info) == 0 ? Int64(info.st_size) : 0)
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-ingest") { db in
            try db.execute(
                sql: """
                    CREATE TABLE customer (
                        id INTEGER PRIMARY KEY,
                        region TEXT NOT NULL,
                        installed_on TEXT
                    );
                    CREATE TABLE meter (
                        id INTEGER PRIMARY KEY,
                        name TEXT NOT NULL UNIQUE,
                        customer_id INTEGER REFERENCES customer(id),
                        region TEXT NOT NULL DEFAULT 'Unassigned',
                        hwm_seq INTEGER NOT NULL DEFAULT -1,
                        first_seen_ms INTEGER,
                        last_received_ms INTEGER,
                        last_ts_ms INTEGER,
                        last_status INTEGER,
                        last_fault TEXT,
                        readings_total INTEGER NOT NULL DEFAULT 0,
                        faults_total INTEGER NOT NULL DEFAULT 0,
                        duplicates_total INTEGER NOT NULL DEFAULT 0,
                        inactive_since_ms INTEGER
                    );
                    -- Append-only: duplicates are caught by meter.hwm_seq, so no per-meter index has to
                    -- be maintained on the hot path (an index here dirties a page per meter per commit).
                    CREATE TABLE reading (
                        meter_id INTEGER NOT NULL,
                        seq INTEGER NOT NULL,
                        ts_ms INTEGER NOT NULL,
                        received_ms INTEGER NOT NULL,
                        kwh REAL NOT NULL,
                        status INTEGER NOT NULL,
                        fault TEXT,
                        voltage REAL
                    );
                    CREATE TABLE meter_month (
                        meter_id INTEGER NOT NULL,
                        month INTEGER NOT NULL,
                        kwh REAL NOT NULL DEFAULT 0,
                        revenue REAL NOT NULL DEFAULT 0,
                        readings INTEGER NOT NULL DEFAULT 0,
                        faults INTEGER NOT NULL DEFAULT 0,
                        good INTEGER NOT NULL DEFAULT 0,
                        fair INTEGER NOT NULL DEFAULT 0,
                        poor INTEGER NOT NULL DEFAULT 0,
                        latency_sum_ms INTEGER NOT NULL DEFAULT 0,
                        latency_count INTEGER NOT NULL DEFAULT 0,
                        latency_max_ms INTEGER NOT NULL DEFAULT 0,
                        imported_status INTEGER,
                        PRIMARY KEY (meter_id, month)
                    ) WITHOUT ROWID;
                    CREATE TABLE quarantine (
                        id INTEGER PRIMARY KEY,
                        received_ms INTEGER NOT NULL,
                        peer TEXT NOT NULL,
                        line INTEGER NOT NULL,
                        code TEXT NOT NULL,
                        detail TEXT NOT NULL,
                        raw BLOB NOT NULL
                    );
                    """)
        }
        CompanySchema.register(in: &migrator)
        migrator.registerMigration("v3-aggregate-watermark") { db in
            // The highest reading rowid the aggregates (meter state, meter_month, latency_month)
            // cover; readings past it are applied again on open. Until now they were always in step.
            try db.execute(
                sql: """
                    CREATE TABLE ingest_watermark (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        reading_rowid INTEGER NOT NULL
                    );
                    INSERT INTO ingest_watermark (id, reading_rowid) VALUES (1, COALESCE((SELECT max(rowid) FROM reading), 0));
                    """)
        }
        migrator.registerMigration("v4-store-settings") { db in
            // What offline tools must agree on with the daemon (its time zone, for calendar months).
            try db.execute(
                sql: """
                    CREATE TABLE store_setting (
                        name TEXT PRIMARY KEY,
                        value TEXT NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v5-reading-by-meter") { db in
            // A meter's readings as a chain through the append-only table (SQLiteMeterStore's
            // recentReadings): each reading keeps its meter's previous rowid (0 for the first; NULL
            // only for a row the writer did not write), the meter row its newest. Still no index on
            // `reading`: the writer knows the previous rowid, so the chain dirties no page an insert
            // does not. Existing rows are linked in one pass: a window over the table, no index needed.
            try db.execute(
                sql: """
                    ALTER TABLE reading ADD COLUMN prev_rowid INTEGER;
                    ALTER TABLE meter ADD COLUMN last_reading_rowid INTEGER;
                    UPDATE reading SET prev_rowid = chain.prev
                    FROM (SELECT rowid AS id, lag(rowid, 1, 0) OVER (PARTITION BY meter_id ORDER BY rowid) AS prev FROM reading) AS chain
                    WHERE reading.rowid = chain.id;
                    UPDATE meter SET last_reading_rowid = newest.id
                    FROM (SELECT meter_id, max(rowid) AS id FROM reading GROUP BY meter_id) AS newest
                    WHERE meter.id = newest.meter_id;
                    """)
        }
        migrator.registerMigration("v6-never-reported-indexes") { db in
            // Every KPI document counts the meters never heard from, of a region or all: indexes
            // that hold exactly those meters (the predicate of SQLiteMeterStore.neverReported) answer
            // it without visiting meter rows, 25 ms -> 2 ms for a region of 25,000 such meters. A
            // meter leaves them at its first reading or flag, so the writer pays once per meter.
            try db.execute(
                sql: """
                    DROP INDEX meter_never_reported;
                    CREATE INDEX meter_never_reported ON meter(id) WHERE last_received_ms IS NULL AND inactive_since_ms IS NULL;
                    CREATE INDEX meter_never_reported_by_region ON meter(region, id)
                        WHERE last_received_ms IS NULL AND inactive_since_ms IS NULL;
                    """)
        }
        migrator.registerMigration("v7-concentrators") { db in
            // meter_auth = certificate (SPEC.md section 10): the meters each data concentrator may send
            // for (concentrators.csv), by meter name, as a concentrator may list meters not yet heard
            // from; and who a quarantined line's client certificate said its sender was.
            try db.execute(
                sql: """
                    CREATE TABLE concentrator_meter (
                        concentrator TEXT NOT NULL,
                        meter TEXT NOT NULL,
                        PRIMARY KEY (concentrator, meter)
                    ) WITHOUT ROWID;
                    ALTER TABLE quarantine ADD COLUMN peer_identity TEXT;
                    """)
        }
        migrator.registerMigration("v8-register-readings") { db in
            // Register readings (SPEC.md section 11). The writer derives a register reading's
            // consumption when it stores it and keeps it in `reading.kwh`, with the register beside it
            // and, for a gap, the start of the interval it was spread over (`span_start_ms`): crash
            // recovery folds the row again from these alone, so the aggregates come out the same.
            // The meter row keeps the baseline for its next register reading and its current run of
            // zero consumption (`zero_since_ms`, `zero_flagged`), so rules that span days survive a
            // restart. `meter_month.estimated`
            // counts the gap shares a month got, `estimated_kwh` their energy. Validation flags are
            // rows, committed with their reading.
            try db.execute(
                sql: """
                    ALTER TABLE reading ADD COLUMN register_kwh REAL;
                    ALTER TABLE reading ADD COLUMN span_start_ms INTEGER;
                    ALTER TABLE meter ADD COLUMN last_register_kwh REAL;
                    ALTER TABLE meter ADD COLUMN last_register_ts_ms INTEGER;
                    ALTER TABLE meter ADD COLUMN zero_since_ms INTEGER;
                    ALTER TABLE meter ADD COLUMN zero_flagged INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE meter_month ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE meter_month ADD COLUMN estimated_kwh REAL NOT NULL DEFAULT 0;
                    CREATE TABLE validation_flag (
                        id INTEGER PRIMARY KEY,
                        meter_id INTEGER NOT NULL,
                        seq INTEGER NOT NULL,
                        ts_ms INTEGER NOT NULL,
                        month INTEGER NOT NULL,
                        rule TEXT NOT NULL,
                        detail TEXT NOT NULL
                    );
                    CREATE INDEX validation_flag_by_month ON validation_flag (month, rule);
                    CREATE INDEX validation_flag_by_meter ON validation_flag (meter_id, ts_ms);
                    """)
        }
        migrator.registerMigration("v9-read-success") { db in
            // The read success rate and interval completeness (SPEC.md section 11): readings per
            // meter per calendar day of their `ts` in the configured zone, kept by the writer like
            // `meter_month` (keyed by day first, so one commit's rows share pages), with the spacings
            // to each reading's predecessor (the meter's observed interval). `meter.first_reading_day` is
            // the earliest day a meter reported: it counts as installed from then at the latest.
            // Days are those of the daemon's zone, which SQL cannot compute: the writer fills both
            // from the readings already stored when it next opens (`read_days_backfill`).
            try db.execute(
                sql: """
                    CREATE TABLE meter_day (
                        day INTEGER NOT NULL,
                        meter_id INTEGER NOT NULL,
                        readings INTEGER NOT NULL,
                        spacing_sum_ms INTEGER NOT NULL DEFAULT 0,
                        spacing_count INTEGER NOT NULL DEFAULT 0,
                        PRIMARY KEY (day, meter_id)
                    ) WITHOUT ROWID;
                    ALTER TABLE meter ADD COLUMN first_reading_day INTEGER;
                    INSERT INTO store_setting (name, value) SELECT 'read_days_backfill', '1' WHERE EXISTS (SELECT 1 FROM reading);
                    """)
        }
        migrator.registerMigration("v10-alerts") { db in
            // Alerts (SPEC.md section 11), one row per episode of a rule's condition on a subject:
            // `resolved_ms` is NULL while it fires. The partial index finds the firing ones at start-up
            // and for every listing without reading the resolved history.
            try db.execute(
                sql: """
                    CREATE TABLE alert (
                        id TEXT PRIMARY KEY,
                        rule TEXT NOT NULL,
                        subject TEXT NOT NULL,
                        fired_ms INTEGER NOT NULL,
                        resolved_ms INTEGER,
                        detail TEXT NOT NULL
                    ) WITHOUT ROWID;
                    CREATE INDEX alert_firing ON alert (fired_ms) WHERE resolved_ms IS NULL;
                    CREATE INDEX alert_resolved ON alert (resolved_ms) WHERE resolved_ms IS NOT NULL;
                    """)
        }
        migrator.registerMigration("v11-read-success-rollups") { db in
            // What the in-memory read success store loads, kept by the writer so that loading it
            // reads days × regions and meters × months rather than every `meter_day` row (tens of
            // millions after a year at 100,000 meters): per day and region the meters that reported
            // (`region_day`, by the meter's current region: an import that moves meters between
            // regions counts again), and per meter-month the spacing sums beside `readings`.
            try db.execute(
                sql: """
                    ALTER TABLE meter_month ADD COLUMN spacing_sum_ms INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE meter_month ADD COLUMN spacing_count INTEGER NOT NULL DEFAULT 0;
                    CREATE TABLE region_day (
                        day INTEGER NOT NULL,
                        region TEXT NOT NULL,
                        reporting INTEGER NOT NULL,
                        PRIMARY KEY (day, region)
                    ) WITHOUT ROWID;
                    """)
            try ReadSuccessRollups.rebuild(db)
        }
        return migrator
    }
}

/// `region_day` and the spacing sums of `meter_month` (migration `v11-read-success-rollups`), as
/// they follow from `meter_day` and the meters' regions.
enum ReadSuccessRollups {
    /// Recomputes both from `meter_day`: once when the tables appear, and after `meter_day` was
    /// filled from stored readings (`read_days_backfill`).
    static func rebuild(_ db: Database) throws {
        try self.rebuildRegionDays(db)
        try db.execute(
            sql: """
                UPDATE meter_month SET spacing_sum_ms = s.spacing_sum_ms, spacing_count = s.spacing_count
                FROM (SELECT meter_id, day / 100 AS month, sum(spacing_sum_ms) AS spacing_sum_ms, sum(spacing_count) AS spacing_count
                      FROM meter_day GROUP BY meter_id, day / 100) AS s
                WHERE meter_month.meter_id = s.meter_id AND meter_month.month = s.month
                """)
    }

    /// Recomputes `region_day`: after an import moved meters to other regions, whose days then count there.
    static func rebuildRegionDays(_ db: Database) throws {
        try db.execute(
            sql: """
                DELETE FROM region_day;
                INSERT INTO region_day (day, region, reporting)
                SELECT d.day, m.region, count(*) FROM meter_day d JOIN meter m ON m.id = d.meter_id WHERE d.readings > 0
                GROUP BY d.day, m.region;
                """)
    }

    /// Each meter's region, to tell after an import whether one moved.
    static func meterRegions(_ db: Database) throws -> [Int64: String] {
        var regions: [Int64: String] = [:]
        let rows = try Row.fetchCursor(db, sql: "SELECT id, region FROM meter")
        while let row = try rows.next() { regions[row[0]] = row[1] }
        return regions
    }
}
