import Foundation
import Logging
import PostgresNIO

/// The commit feed on PostgreSQL: reads the `commit_feed` rows other nodes committed since the
/// last poll, each exactly once, whatever order their transactions committed in.
///
/// A row is identified by its transaction's id, not by an insertion order: a transaction that took
/// a lower id may commit after one with a higher id was read. So the feed keeps the snapshot of its
/// last poll (the cursor) and each poll returns the rows its own snapshot sees and the cursor did
/// not (`NOT pg_visible_in_snapshot(xid, cursor)`), in one statement, then keeps the poll's
/// snapshot as the next cursor. Rows the cursor did not see have ids at or above its `xmin`, so an
/// index on `xid` bounds the scan to the last poll's worth of commits.
///
/// The singleton leader prunes rows older than the retention and records the cut-off in
/// `commit_feed_pruned`; a node whose cursor is older than that cut-off plus ``commitAllowanceMs``
/// (a commit's statement cannot take longer) may have missed pruned rows and reports
/// ``CommitFeedPoll/restarted``, so its KPI stores load again.
actor PostgreSQLCommitFeed: CommitFeedSource {
    /// The longest a commit's statement is assumed to run between inserting its feed row and committing.
    static let commitAllowanceMs: Int64 = 30_000
    private let connector: PostgreSQLConnector
    private let node: String
    private var connection: PostgresConnection?
    /// A poll's snapshot and when the server took it.
    typealias Cursor = (snapshot: CommitSnapshot, takenMs: Int64)
    private var cursor: Cursor?
    /// `store_setting.company_data_version` as the last poll read it (``companyDataVersionQuery``).
    private var companyDataVersion: String?

    /// Every company import's transaction bumps it (``PostgreSQLCompanyImportSink``); a poll that
    /// finds it changed reports ``CommitFeedPoll/companyDataChanged``.
    static let companyDataVersionQuery = "(SELECT value FROM store_setting WHERE name = 'company_data_version')"

    init(connector: PostgreSQLConnector, node: String) {
        self.connector = connector
        self.node = node
    }

    deinit {
        self.connection?.closeInBackground()
    }

    func poll() async throws -> CommitFeedPoll {
        let connection = try await self.open()
        do {
            guard let cursor = self.cursor else {
                (self.cursor, self.companyDataVersion) = try await self.start(connection)
                return CommitFeedPoll(restarted: true)
            }
            let rows = try await self.rows(
                connection,
                """
                SELECT s.now::text, s.taken_ms, s.company_data_version, p.before_ms, f.xid, f.payload, f.started_days, f.started_meters
                FROM (
                    SELECT pg_current_snapshot() AS now, (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS taken_ms,
                           \(unescaped: Self.companyDataVersionQuery) AS company_data_version
                ) AS s
                CROSS JOIN commit_feed_pruned AS p
                LEFT JOIN commit_feed AS f
                    ON f.xid >= \(Int64(cursor.snapshot.xmin)) AND f.node <> \(self.node)
                    AND NOT pg_visible_in_snapshot(f.xid::text::xid8, \(cursor.snapshot.description)::pg_snapshot)
                WHERE p.id = 1
                ORDER BY f.xid
                """)
            var poll = CommitFeedPoll()
            var next: Cursor?
            for row in rows {
                let (now, takenMs, companyDataVersion, prunedBefore, xid, payload, startedDays, startedMeters) = try row.decode(
                    (String, Int64, String?, Int64, Int64?, ByteBuffer?, [Int64]?, [Int64]?).self)
                if next == nil {
                    guard let snapshot = CommitSnapshot(now) else { throw PostgreSQLStoreError("unreadable snapshot \(now)") }
                    next = (snapshot, takenMs)
                    if companyDataVersion != self.companyDataVersion {
                        poll.companyDataChanged = true
                        self.companyDataVersion = companyDataVersion
                    }
                    if prunedBefore + Self.commitAllowanceMs > cursor.takenMs {
                        // Rows this node had not read may be gone: start again from this snapshot.
                        self.cursor = next
                        return CommitFeedPoll(restarted: true, companyDataChanged: poll.companyDataChanged)
                    }
                }
                guard let xid, let payload else { continue }
                var delta = try CommitFeedPayload.decode(payload.readableBytesView)
                delta.commitXid = UInt64(xid)
                for (day, meter) in zip(startedDays ?? [], startedMeters ?? []) {
                    delta.startedDays.append(AggregateDelta.MeterDayKey(meterID: meter, day: Day(key: Int(day))))
                }
                poll.deltas.append(delta)
            }
            if let next { self.cursor = next }
            return poll
        } catch {
            // The cursor stays: the rows are still there when the connection is back.
            connection.closeInBackground()
            self.connection = nil
            throw PostgreSQLStoreError.describing(error, doing: "reading the commit feed", address: self.connector.address)
        }
    }

    func prune(keepingMs: Int64) async throws -> Int {
        let connection = try await self.open()
        do {
            let rows = try await self.rows(
                connection,
                """
                WITH cutoff AS (SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint - \(keepingMs) AS ms),
                gone AS (DELETE FROM commit_feed WHERE created_ms < (SELECT ms FROM cutoff) RETURNING 1),
                marked AS (UPDATE commit_feed_pruned SET before_ms = GREATEST(before_ms, (SELECT ms FROM cutoff)) WHERE id = 1)
                SELECT count(*) FROM gone
                """)
            return Int(try rows.first?.decode(Int64.self) ?? 0)
        } catch {
            connection.closeInBackground()
            self.connection = nil
            throw PostgreSQLStoreError.describing(error, doing: "pruning the commit feed", address: self.connector.address)
        }
    }

    /// The first cursor: from now on, every other node's commit is delivered.
    private func start(_ connection: PostgresConnection) async throws -> (cursor: Cursor, companyDataVersion: String?) {
        let row = try await self.rows(
            connection,
            """
            SELECT pg_current_snapshot()::text, (extract(epoch FROM statement_timestamp()) * 1000)::bigint,
                   \(unescaped: Self.companyDataVersionQuery)
            """
        ).first
        guard let (text, takenMs, version) = try row?.decode((String, Int64, String?).self), let snapshot = CommitSnapshot(text) else {
            throw PostgreSQLStoreError("PostgreSQL returned no snapshot for the commit feed")
        }
        return ((snapshot, takenMs), version)
    }

    private func open() async throws -> PostgresConnection {
        if let connection = self.connection, !connection.isClosed { return connection }
        let connection = try await self.connector.connect(id: 5)
        self.connection = connection
        return connection
    }

    private func rows(_ connection: PostgresConnection, _ query: PostgresQuery) async throws -> [PostgresRow] {
        try await connection.allRows(query, logger: self.connector.logger, timeout: self.connector.timeouts.feed)
    }
}

/// The singleton lock on PostgreSQL: a session-level advisory lock (``key``) held by a connection
/// of its own. The server frees it the moment that connection ends (the node died, was stopped, or
/// lost the network and the server noticed), so another node's next try takes it.
actor PostgreSQLSingletonLock: SingletonLock {
    /// `pg_try_advisory_lock` key: "meterd" in ASCII, then 1.
    static let key: Int64 = 0x6D_6574_6572_6401
    private let connector: PostgreSQLConnector
    private var connection: PostgresConnection?
    private var held = false

    init(connector: PostgreSQLConnector) {
        self.connector = connector
    }

    deinit {
        self.connection?.closeInBackground()
    }

    func acquireOrConfirm() async -> Bool {
        do {
            if let connection = self.connection, connection.isClosed {
                self.connection = nil
                self.held = false
            }
            let connection: PostgresConnection
            if let open = self.connection {
                connection = open
            } else {
                connection = try await self.connector.connect(id: 6)
                self.connection = connection
            }
            if self.held {
                // The session holds the lock as long as it lives: a round trip proves it does.
                _ = try await connection.allRows("SELECT 1", logger: self.connector.logger)
                return true
            }
            let taken =
                try await connection.allRows("SELECT pg_try_advisory_lock(\(Self.key))", logger: self.connector.logger).first?
                .decode(Bool.self) ?? false
            self.held = taken
            return taken
        } catch {
            self.connection?.closeInBackground()
            self.connection = nil
            self.held = false
            return false
        }
    }

    /// Closing the socket fails the query that waits on it. Should the server still hold the
    /// session (it cannot tell a black-holed client from a quiet one until TCP keepalive gives up),
    /// the lock stays with that session, and nobody, this node included, takes it until then.
    func abandon() async {
        self.connection?.closeInBackground()
        self.connection = nil
        self.held = false
    }

    func release() async {
        guard let connection = self.connection else { return }
        self.connection = nil
        self.held = false
        // Closing the session frees its advisory locks.
        try? await connection.close()
    }
}
