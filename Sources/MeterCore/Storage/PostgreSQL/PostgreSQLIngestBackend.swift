import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The PostgreSQL side of the ``IngestWriter``: its own connection, used from the writer's thread
/// only, blocking on each round trip (the writer is a plain thread, not a task).
///
/// A transaction collects the batch's rows in arrays and sends them at the end as one call of
/// `meterd_commit_batch` (``PostgreSQLCommitStatement``): one statement and one implicit
/// transaction, committed with `synchronous_commit = on`, then a trivial query that proves the
/// commit (``runCommitted(_:_:)``); only then do acks go out. Aggregates always commit with their readings
/// (``supportsDeferredAggregates`` is false): there is no recovery pass to fold readings again.
final class PostgreSQLIngestBackend: IngestBackend {
    let connector: PostgreSQLConnector
    private let logger: Logger
    private var connection: PostgresConnection
    /// Reading positions come from `reading_position_block` in blocks: a round trip per
    /// ``positionBlock`` readings, and positions stay unique when several nodes write.
    private var nextPosition: Int64 = 0
    private var positionLimit: Int64 = 0
    static let positionBlock: Int64 = 10_000
    /// The UTC month whose partitions were last made sure of.
    private var partitionedMonth: Int
    /// Inside an explicit transaction (a company import): a dropped connection must fail the
    /// transaction, not be replaced by a new one where later statements would commit on their own.
    private var transactionOpen = false
    /// The last commit failed with the connection: the server may have committed it all the same.
    /// Readings and aggregates find out by themselves (the high-water marks moved); quarantined
    /// lines, which have no key, are looked up before the next commit sends them again.
    var lastOutcomeUnknown = false
    /// Each meter's open month and day as its row held them at the cached high-water mark
    /// (``PostgreSQLOpenPeriods``): loaded with the meters, kept by successful commits.
    var openPeriods: [Int64: PostgreSQLOpenPeriods.Known] = [:]

    /// This node's name in the commit feed.
    let node: String

    init(connector: PostgreSQLConnector, node: String, logger: Logger) throws {
        self.connector = connector
        self.node = node
        self.logger = logger
        self.connection = try connector.connectBlocking(id: 1, on: PostgreSQLConnector.writerEventLoopGroup.next())
        let now = WallClock.nowMs()
        self.partitionedMonth = PostgreSQLSchema.utcMonth(ofMilliseconds: now).key
        try PostgreSQLSchema.ensurePartitions(self.connection, nowMs: now, address: connector.address, logger: logger)
    }

    deinit {
        self.connection.closeInBackground()
    }

    var supportsDeferredAggregates: Bool { false }
    var registersMetersTogether: Bool { true }

    /// Runs a statement on the writer's connection, opening a new one first when the last one
    /// closed (the server restarted, the network dropped): the pipeline retries failed commits
    /// with a growing delay, so that is the reconnect backoff.
    @discardableResult
    func run(_ query: PostgresQuery, _ doing: String, timeout: TimeAmount? = nil) throws -> [PostgresRow] {
        if self.connection.isClosed {
            guard !self.transactionOpen else {
                throw PostgreSQLStoreError(
                    "the connection to PostgreSQL at \(self.connector.address.server) dropped mid-transaction, which was rolled back",
                    connectionLost: true)
            }
            self.connection = try self.connector.connectBlocking(id: 1, on: PostgreSQLConnector.writerEventLoopGroup.next())
            // A crash can undo the `nextval` that gave this block (sequences are not flushed until
            // a commit): the sequence could give it out again, so a new one is taken.
            self.positionLimit = self.nextPosition
            self.logger.notice("Reconnected to PostgreSQL", metadata: ["db.store": "\(self.connector.address)"])
        }
        return try self.connection.runBlocking(
            query, logger: self.logger, address: self.connector.address, doing: doing, timeout: timeout ?? self.connector.timeouts.writer)
    }

    func checkReachable() throws {
        try self.run("SELECT 1", "checking that the database answers", timeout: self.connector.timeouts.commit)
    }

    /// Runs a statement whose effect must be durable before the caller acts on it (acks, the
    /// transition log), and returns only once its transaction has committed.
    ///
    /// In the extended protocol the server answers a statement (CommandComplete, which ends
    /// PostgresNIO's query) before it commits the statement's implicit transaction at Sync, and
    /// only then says ReadyForQuery; a crash or a failing deferred constraint in between leaves an
    /// answered statement uncommitted. PostgresNIO sends the next query only after ReadyForQuery,
    /// so a trivial one answered proves the commit. Its failure leaves the outcome open.
    @discardableResult
    func runCommitted(_ query: PostgresQuery, _ doing: String) throws -> [PostgresRow] {
        let rows = try self.run(query, doing, timeout: self.connector.timeouts.commit)
        do {
            _ = try self.connection.runBlocking(
                "SELECT 1", logger: self.logger, address: self.connector.address,
                doing: "\(doing) (answered, but its commit was not confirmed: it may or may not have happened)",
                timeout: self.connector.timeouts.commit)
        } catch var error as PostgreSQLStoreError {
            error.connectionLost = true
            throw error
        }
        return rows
    }

    /// Any failed commit may have committed after all (a connection lost after the server took the
    /// call) or met another node's write (SQLSTATE 40001): reloading the meter rows is cheap next
    /// to a commit retried with stale high-water marks.
    func invalidatesMeterCache(_ error: any Error) -> Bool { true }

    /// `meterd_commit_batch` raises 40001 when a meter's `hwm_seq` moved under the batch; a reading
    /// another node committed first (the same meter on two nodes at once) fails the insert with
    /// 23505 (unique violation) while waiting for that node's transaction; 40P01 is a deadlock the
    /// server broke. Each rolled the whole batch back.
    /// Only a lost connection leaves the outcome open: an error the server answered rolled the
    /// batch back. Errors of another kind are taken as unknown, to be safe.
    func outcomeUnknown(_ error: any Error) -> Bool {
        (error as? PostgreSQLStoreError)?.connectionLost ?? true
    }

    func lostRace(_ error: any Error) -> Bool {
        guard let error = error as? PostgreSQLStoreError else { return false }
        return error.isRetryable || error.sqlState == "23505"
    }

    func write<T>(_ body: (any IngestTransaction) throws -> T) throws -> T {
        let month = PostgreSQLSchema.utcMonth(ofMilliseconds: WallClock.nowMs()).key
        if month != self.partitionedMonth {
            try PostgreSQLSchema.ensurePartitions(self.connection, nowMs: WallClock.nowMs(), address: self.connector.address, logger: self.logger)
            self.partitionedMonth = month
        }
        let transaction = PostgreSQLIngestTransaction(backend: self)
        let value = try body(transaction)
        try transaction.commit()
        return value
    }

    /// The next reading position, taking a new block from the sequence when this one is used up.
    func allocatePosition() throws -> Int64 {
        if self.nextPosition >= self.positionLimit {
            let rows = try self.run("SELECT nextval('reading_position_block')", "allocating reading positions")
            let block = try rows.first?.decode(Int64.self) ?? 1
            self.nextPosition = block * Self.positionBlock
            self.positionLimit = self.nextPosition + Self.positionBlock
        }
        defer { self.nextPosition += 1 }
        return self.nextPosition
    }

    /// Nothing to wait for: the server checks its own pages.
    func awaitWritable() throws {}

    func loadMeters() throws -> [StoredMeterState] {
        let (meters, openPeriods) = try self.decodeMeters(self.run("\(unescaped: Self.meterColumns) FROM meter", "loading the meters"))
        self.openPeriods = openPeriods
        return meters
    }

    /// The rows of a lost race's meters, found by name: the batch's meters it registered were
    /// dropped from the cache with its rollback.
    func loadMeters(named names: [String]) throws -> [StoredMeterState] {
        let rows = try self.run("\(unescaped: Self.meterColumns) FROM meter WHERE name = ANY(\(names))", "reloading \(names.count) meters")
        let (meters, openPeriods) = try self.decodeMeters(rows)
        self.openPeriods.merge(openPeriods) { _, reloaded in reloaded }
        return meters
    }

    private static let meterColumns = """
        SELECT id, name, hwm_seq, region, COALESCE(last_reading_position, 0), last_ts_ms, last_register_kwh, last_register_ts_ms,
               zero_since_ms, zero_flagged, open_month, open_day
        """

    private func decodeMeters(_ rows: [PostgresRow]) throws -> ([StoredMeterState], [Int64: PostgreSQLOpenPeriods.Known]) {
        var openPeriods: [Int64: PostgreSQLOpenPeriods.Known] = [:]
        openPeriods.reserveCapacity(rows.count)
        let meters = try rows.map { row in
            let (id, name, hwm, region, position, lastTs, register, registerTs, zeroSince, zeroFlagged, openMonth, openDay) = try row.decode(
                (Int64, String, Int64, String, Int64, Int64?, Double?, Int64?, Int64?, Bool, Int64?, Int64?).self)
            openPeriods[id] = PostgreSQLOpenPeriods.Known(month: openMonth.map(Int.init), day: openDay.map(Int.init))
            return StoredMeterState(
                id: id, name: name, region: region, highWaterMark: hwm, lastReadingRowID: position, lastTimestampMs: lastTs,
                lastRegister: register, lastRegisterTimestampMs: registerTs,
                zeroRun: MeteringRules.ZeroRun(sinceMs: zeroSince, flagged: zeroFlagged))
        }
        return (meters, openPeriods)
    }

    /// Aggregates commit with their readings in the same statement: nothing is ever past the watermark.
    func readingsPastWatermark() throws -> [RecoveredReading] { [] }

    /// The schema had `meter_day` from its first migration.
    func backfillReadDays(calendar: inout MonthCalendar) throws {}

    func flagInactive(_ candidates: [StoredMeterName], cutoffMs: Int64, startMs: Int64) throws -> [InactiveFlag] {
        guard !candidates.isEmpty else { return [] }
        // The condition is checked again: a reading may have arrived since the candidates were read.
        let rows = try self.runCommitted(
            """
            UPDATE meter SET inactive_since_ms = COALESCE(last_received_ms, \(startMs))
            WHERE id = ANY(\(candidates.map(\.id))) AND inactive_since_ms IS NULL AND COALESCE(last_received_ms, \(startMs)) < \(cutoffMs)
            RETURNING id, last_received_ms
            """, "flagging inactive meters")
        var last: [Int64: Int64?] = [:]
        for row in rows {
            let (id, received) = try row.decode((Int64, Int64?).self)
            last[id] = received
        }
        return candidates.compactMap { meter in last[meter.id].map { InactiveFlag(meter: meter, lastReceivedMs: $0) } }
    }

    func recordSnapshot(_ document: String, period: KPIPeriod, generatedMs: Int64, history: Int) throws {
        try self.run(
            """
            WITH added AS (
                INSERT INTO kpi_snapshot (generated_ms, period_from, period_to, document)
                VALUES (\(generatedMs), \(period.from.key), \(period.to.key), \(document))
            )
            DELETE FROM kpi_snapshot WHERE id <= (SELECT id FROM kpi_snapshot ORDER BY id DESC LIMIT 1 OFFSET \(history - 1))
            """, "recording a KPI snapshot", timeout: self.connector.timeouts.commit)
        // The DELETE sees the table as it was before the INSERT, so the snapshot just added is kept
        // with the newest `history - 1` before it.
    }

    func importCompanyFile(_ path: String, progress: (@Sendable (ImportProgress) -> Void)?) -> FileImportResult {
        PostgreSQLCompanyImportSink.importFile(path, backend: self, progress: progress)
    }

    /// Runs `body` in one explicit transaction on the writer's connection: committed if it
    /// returns, rolled back if it throws.
    func inTransaction<T>(_ doing: String, _ body: () throws -> T) throws -> T {
        try self.run("BEGIN", "starting \(doing)")
        self.transactionOpen = true
        do {
            let value = try body()
            try self.run("COMMIT", "committing \(doing)")
            self.transactionOpen = false
            return value
        } catch {
            if !self.connection.isClosed { _ = try? self.run("ROLLBACK", "rolling \(doing) back") }
            self.transactionOpen = false
            throw error
        }
    }

    /// Records the zone the store's months follow, or checks that this node's is the one recorded:
    /// the nodes of one store must agree, or they would book the same moment in different months
    /// (a node at UTC+14 puts 12:00Z on 30 November into December).
    func recordTimeZone(_ zone: TimeZone) throws {
        let rows = try self.run(
            """
            WITH inserted AS (
                INSERT INTO store_setting (name, value) VALUES ('time_zone', \(zone.identifier)) ON CONFLICT (name) DO NOTHING RETURNING value
            )
            SELECT value FROM inserted UNION ALL SELECT value FROM store_setting WHERE name = 'time_zone'
            """, "recording the time zone", timeout: self.connector.timeouts.commit)
        guard let recorded = try rows.first?.decode(String.self), !zone.keepsTheSameCalendar(as: recorded) else { return }
        throw ConfigurationError(
            key: "timezone",
            "this node's months would follow \(zone.identifier), but the store's follow \(recorded): every node on one store "
                + "must use the same timezone (set timezone = \(recorded))")
    }

    func recordAlerts(_ alerts: [Alert], history: Int) throws {
        try self.run(
            """
            INSERT INTO alert (id, rule, subject, fired_ms, resolved_ms, detail)
            SELECT id, rule, subject, fired_ms, NULLIF(resolved_ms, \(PostgreSQLCommitStatement.nullInteger)), detail
            FROM unnest(\(alerts.map(\.id)), \(alerts.map(\.rule.rawValue)), \(alerts.map(\.subject)), \(alerts.map(\.firedMs)),
                        \(alerts.map { $0.resolvedMs ?? PostgreSQLCommitStatement.nullInteger }), \(alerts.map(\.detail)))
                 AS a(id, rule, subject, fired_ms, resolved_ms, detail)
            ON CONFLICT (id) DO UPDATE SET resolved_ms = excluded.resolved_ms, detail = excluded.detail
            """, "recording alerts", timeout: self.connector.timeouts.commit)
        if alerts.contains(where: { $0.state == .resolved }) {
            try self.run(
                """
                DELETE FROM alert WHERE resolved_ms IS NOT NULL AND resolved_ms < (
                    SELECT resolved_ms FROM alert WHERE resolved_ms IS NOT NULL ORDER BY resolved_ms DESC LIMIT 1 OFFSET \(history - 1))
                """, "trimming resolved alerts", timeout: self.connector.timeouts.commit)
        }
    }
}

/// One batch of the PostgreSQL writer: rows collected in arrays, sent as one statement by ``commit()``.
final class PostgreSQLIngestTransaction: IngestTransaction {
    /// Filled by ``commit()`` from what `meterd_commit_batch` returns.
    private(set) var startedDays: [AggregateDelta.MeterDayKey] = []
    private(set) var commitXid: UInt64?
    private var published = AggregateDelta()
    private let backend: PostgreSQLIngestBackend
    private var readings = PostgreSQLCommitStatement.Readings()
    private var flags = PostgreSQLCommitStatement.Flags()
    private var quarantined = PostgreSQLCommitStatement.Quarantined()
    private var aggregates: BatchAggregates?
    private var regionNames: [String] = []

    init(backend: PostgreSQLIngestBackend) {
        self.backend = backend
    }

    func insertReading(meterID: Int64, _ reading: Reading, receivedMs: Int64, previousRowID: Int64, spanStartMs: Int64?) throws -> Int64 {
        let position = try self.backend.allocatePosition()
        self.readings.append(meterID: meterID, reading, position: position, receivedMs: receivedMs, spanStartMs: spanStartMs)
        return position
    }

    func insertFlag(meterID: Int64, reading: Reading, month: Int, rule: ValidationRule, detail: String) throws {
        self.flags.append(meterID: meterID, reading: reading, month: month, rule: rule, detail: detail)
    }

    func quarantine(_ line: QuarantinedLine) throws {
        self.quarantined.append(line)
    }

    /// Registered at once, outside the batch, and idempotent: if the batch then fails, the meter
    /// stays known with no readings, and registering it again finds the same row.
    func registerMeter(named name: String, region: String) throws -> Int64 {
        try self.registerMeters(named: [name], region: region)[0]
    }

    /// All in one statement, outside the batch like ``registerMeter(named:region:)``, in name order.
    /// A meter already there is only looked up: locking its row (as `DO UPDATE` does, to return
    /// it) took meter rows in name order while commits take them in id order, and a node
    /// registering meters another node was committing readings of deadlocked with it. A name
    /// another node is inserting waits for that node's insert, which waits for nothing else.
    func registerMeters(named names: [String], region: String) throws -> [Int64] {
        let rows = try self.backend.run(
            """
            INSERT INTO meter (name, region) SELECT unnest(\(PostgreSQLArray(names.sorted()))), \(region)
            ON CONFLICT (name) DO NOTHING RETURNING id, name
            """, "registering \(names.count) meters")
        var ids: [String: Int64] = [:]
        ids.reserveCapacity(names.count)
        for row in rows {
            let (id, name) = try row.decode((Int64, String).self)
            ids[name] = id
        }
        // The names already there: committed by now (an insert of the same name in flight was
        // waited for), so a new statement sees them.
        let existing = names.filter { ids[$0] == nil }
        if !existing.isEmpty {
            for row in try self.backend.run(
                "SELECT id, name FROM meter WHERE name = ANY(\(PostgreSQLArray(existing)))", "looking up \(existing.count) meters")
            {
                let (id, name) = try row.decode((Int64, String).self)
                ids[name] = id
            }
        }
        return try names.map { name in
            guard let id = ids[name] else { throw PostgreSQLStoreError("registering meter \(name) returned no id") }
            self.registered(id)
            return id
        }
    }

    /// A meter new to this writer has no open periods, as its row has none unless another node
    /// committed readings of it; then its high-water mark moved too, so the meter's first commit
    /// here rolls back and the writer reloads it.
    private func registered(_ id: Int64) {
        if self.backend.openPeriods[id] == nil { self.backend.openPeriods[id] = PostgreSQLOpenPeriods.Known() }
    }

    func writeAggregates(_ aggregates: BatchAggregates, regionNames: [String]) throws {
        self.aggregates = aggregates
        self.regionNames = regionNames
    }

    func publish(_ delta: AggregateDelta) {
        self.published = delta
    }

    /// Sends the batch: one statement and one transaction, and a trivial query proving its commit.
    func commit() throws {
        if self.backend.lastOutcomeUnknown, !self.quarantined.received.isEmpty {
            try self.dropQuarantinedLinesAlreadyStored()
        }
        var aggregates = self.aggregates ?? BatchAggregates()
        let shares = PostgreSQLOpenPeriods.split(&aggregates, known: self.backend.openPeriods)
        let statement = PostgreSQLCommitStatement(
            readings: self.readings, flags: self.flags, quarantined: self.quarantined, aggregates: aggregates, openShares: shares,
            regionNames: self.regionNames, node: self.backend.node, feedPayload: ByteBuffer(bytes: CommitFeedPayload.encode(self.published)))
        guard !statement.isEmpty else { return }
        let rows: [PostgresRow]
        do {
            rows = try self.backend.runCommitted(statement.query, "committing a batch")
        } catch {
            if self.backend.outcomeUnknown(error) { self.backend.lastOutcomeUnknown = true }
            throw error
        }
        self.backend.lastOutcomeUnknown = false
        for (meterID, share) in shares {
            self.backend.openPeriods[meterID, default: .init()].take(share)
        }
        var started: [AggregateDelta.MeterDayKey] = []
        for row in rows {
            let (day, meterID, xid) = try row.decode((Int64?, Int64?, Int64?).self)
            if let day, let meterID {
                started.append(AggregateDelta.MeterDayKey(meterID: meterID, day: Day(key: Int(day))))
            } else if let xid {
                self.commitXid = UInt64(xid)
            }
        }
        self.startedDays = started
    }

    /// Leaves out the quarantined lines an attempt whose outcome was unknown did store: one
    /// look-up after a lost connection, not on every commit.
    private func dropQuarantinedLinesAlreadyStored() throws {
        let times = Array(Set(self.quarantined.received))
        var stored = Set<PostgreSQLCommitStatement.Quarantined.Key>()
        for row in try self.backend.run(
            "SELECT received_ms, peer, line FROM quarantine WHERE received_ms = ANY(\(times))", "looking for quarantined lines already stored")
        {
            let (received, peer, line) = try row.decode((Int64, String, Int64).self)
            stored.insert(.init(receivedMs: received, peer: peer, line: line))
        }
        self.quarantined.removeAll(storedAs: stored)
    }
}
